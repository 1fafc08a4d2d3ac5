#include "roles/broker.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "lib/err.h"
#include "lib/log.h"

int broker_role_start(kafka_broker_t **out, const struct conf *c)
{
    const struct kafka_topic_spec topics[] = {
        { c->topic_send, c->send_partitions },
        { c->topic_receive, c->receive_partitions },
    };
    int rc = kafka_broker_start(out, c->embedded_brokers, topics, 2);
    if (rc) {
        log_error("broker_start_failed", "err=%s", err_code(rc));
        return rc;
    }
    const char *bs = kafka_broker_bootstraps(*out);
    if (c->kafka_bootstrap_file[0] && (rc = kafka_broker_write_bootstrap(*out, c->kafka_bootstrap_file))) {
        log_error("bootstrap_write_failed", "path=%s err=%s", c->kafka_bootstrap_file, err_code(rc));
        kafka_broker_stop(*out);
        return rc;
    }
    log_info("broker_started", "bootstrap=%s brokers=%d send_partitions=%d receive_partitions=%d file=%s",
             bs, c->embedded_brokers, c->send_partitions, c->receive_partitions,
             c->kafka_bootstrap_file[0] ? c->kafka_bootstrap_file : "-");
    return 0;
}

static void broker_http_errors(kafka_broker_t *b, http_req_t *req)
{
    size_t len;
    const char *body = http_req_body(req, &len);
    cJSON *o = cJSON_ParseWithLength(body ? body : "", len);
    const cJSON *api = cJSON_GetObjectItemCaseSensitive(o, "api_key");
    const cJSON *errs = cJSON_GetObjectItemCaseSensitive(o, "errors");
    int n = cJSON_GetArraySize(errs), codes[1000], rc = ERR_BAD_REQUEST;
    if (cJSON_IsNumber(api) && cJSON_IsArray(errs) && n > 0 && n <= 1000) {
        int i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, errs) codes[i++] = cJSON_IsNumber(e) ? e->valueint : -1;
        rc = kafka_broker_push_errors(b, api->valueint, codes, (size_t)n);
    }
    cJSON_Delete(o);
    if (rc)
        http_respond_error(req, 400, "bad_request", "body: {\"api_key\":N,\"errors\":[code,...]} (1..1000)");
    else
        http_respond(req, 200, "application/json", "{\"ok\":true}", 11, NULL);
}

/* {"rtt_ms":N}: every response of the broker waits N ms (0 ends it). A
 * produce then reaches the log at once but its acknowledgement can outlive
 * message.timeout.ms: the "possibly persisted" failure. */
static int broker_http_rtt(kafka_broker_t *b, http_req_t *req, int id)
{
    size_t len;
    const char *body = http_req_body(req, &len);
    cJSON *o = cJSON_ParseWithLength(body ? body : "", len);
    const cJSON *rtt = cJSON_GetObjectItemCaseSensitive(o, "rtt_ms");
    int rc = cJSON_IsNumber(rtt) ? kafka_broker_set_rtt(b, id, rtt->valueint) : ERR_BAD_REQUEST;
    cJSON_Delete(o);
    return rc;
}

int broker_role_http(kafka_broker_t *b, http_req_t *req)
{
    static const char pfx[] = "/faults/broker/";
    const char *path = http_req_path(req);
    if (strncmp(path, "/faults/", 8) != 0)
        return 0;
    if (strcmp(http_req_method(req), "POST") != 0) {
        http_respond_error(req, 405, "bad_request", "use POST");
        return 1;
    }
    if (!strcmp(path, "/faults/request-errors")) {
        broker_http_errors(b, req);
        return 1;
    }
    char *end;
    long id = strncmp(path, pfx, sizeof pfx - 1) ? -1 : strtol(path + sizeof pfx - 1, &end, 10);
    int rc = ERR_NOT_FOUND;
    if (id > 0 && id < 1000 && (!strcmp(end, "/down") || !strcmp(end, "/up")))
        rc = kafka_broker_set_down(b, (int)id, !strcmp(end, "/down"));
    else if (id > 0 && id < 1000 && !strcmp(end, "/rtt"))
        rc = broker_http_rtt(b, req, (int)id);
    if (rc == ERR_BAD_REQUEST)
        http_respond_error(req, 400, "bad_request", "body: {\"rtt_ms\":N} (0..60000)");
    else if (rc)
        http_respond_error(req, rc == ERR_NOT_FOUND ? 404 : 500, err_code(rc), "no such broker or fault");
    else
        http_respond(req, 200, "application/json", "{\"ok\":true}", 11, NULL);
    return 1;
}
