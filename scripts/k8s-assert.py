#!/usr/bin/python3
"""What a cluster would do with a rendered overlay (make k8s-check).

    k8s-assert.py RENDER.yaml OVERLAY_DIR
    k8s-assert.py --self-test RENDER.yaml OVERLAY_DIR   (a good render: plants
        one defect per rule in a copy and checks each is reported)

Schemas (scripts/k8s-validate) say the objects are well formed; this says
what they would do once applied: which image each workload runs, whether a
store's data lands on its volume, whether scheduling, probes, disruption
budgets, security contexts and network policies do what chatd's operations
rely on. Each rule is written for the class of defect, not one object; every
problem is printed, exit 1 if any. Needs python3-yaml (scripts/deps.sh).
"""
import os
import re
import sys

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# Where each image keeps its data, from its Dockerfile: the VOLUME paths
# (a runtime such as containerd mounts an anonymous, container-private
# volume at each one not covered by a mount of the pod: anything a pod
# mounts *above* a VOLUME path does not receive what is written below it),
# and how the pod's spec tells the data directory.
#   apache/kafka: docker/jvm/Dockerfile, VOLUME ["/etc/kafka/secrets",
#                 "/var/lib/kafka/data", "/mnt/shared/config"]; log.dirs
#   redis:        VOLUME /data, WORKDIR /data; `dir` of its config
#   postgres:     VOLUME /var/lib/postgresql/data; PGDATA
#   prom/prometheus: VOLUME ["/prometheus"]; --storage.tsdb.path
# An image with a persistent volume but no entry here is an error: add it.
IMAGES = {
    "apache/kafka": {
        "volumes": ["/etc/kafka/secrets", "/var/lib/kafka/data", "/mnt/shared/config"],
        "data": lambda c, objs: env_value(c, "KAFKA_LOG_DIRS") or "/tmp/kraft-combined-logs",
    },
    "redis": {"volumes": ["/data"], "data": lambda c, objs: redis_dir(c, objs)},
    "postgres": {
        "volumes": ["/var/lib/postgresql/data"],
        "data": lambda c, objs: env_value(c, "PGDATA") or "/var/lib/postgresql/data",
    },
    "prom/prometheus": {
        "volumes": ["/prometheus"],
        "data": lambda c, objs: flag_value(c, "--storage.tsdb.path") or "/prometheus",
    },
    #   prom/alertmanager: VOLUME ["/alertmanager"]; --storage.path
    "prom/alertmanager": {
        "volumes": ["/alertmanager"],
        "data": lambda c, objs: flag_value(c, "--storage.path") or "/alertmanager",
    },
}

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
HASHED = re.compile(r"-[a-z0-9]{10}$")  # kustomize's generator suffix

errs = []


def err(who, msg):
    errs.append(f"{who}: {msg}")


def pod_spec(o):
    if o["kind"] == "CronJob":
        return o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return o["spec"]["template"]["spec"]


def pod_labels(o):
    t = o["spec"]["jobTemplate"]["spec"]["template"] if o["kind"] == "CronJob" else o["spec"]["template"]
    return t.get("metadata", {}).get("labels", {})


def containers(spec):
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def who(o):
    return f"{o['kind']}/{o['metadata']['name']}"


def env_value(c, name):
    for e in c.get("env", []):
        if e["name"] == name and "value" in e:
            return e["value"]
    return None


def flag_value(c, flag):
    for a in c.get("args", []) + c.get("command", []):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def config_files(objs, spec):
    """name -> text of every ConfigMap key mounted by the pod, per mount path."""
    cms = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    out = {}
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec.get("containers", []):
        for m in c.get("volumeMounts", []):
            v = vols.get(m["name"], {})
            cm = cms.get(v.get("configMap", {}).get("name"))
            if cm:
                for k, text in cm.get("data", {}).items():
                    out[os.path.join(m["mountPath"], k)] = text
    return out


def redis_dir(c, objs):
    text = " ".join(c.get("command", []) + c.get("args", []))
    m = re.search(r"--dir\s+(\S+)", text)
    if m:
        return m.group(1)
    for path, conf in CURRENT_FILES.items():
        if path in text:
            m = re.search(r"^dir\s+(\S+)", conf, re.M)
            if m:
                return m.group(1)
    return "/data"  # the image's WORKDIR, Redis's default ./


CURRENT_FILES = {}


def is_sentinel(c):
    """A Redis-image container that runs Sentinel (keeps no data, no maxmemory)."""
    argv = " ".join(c.get("command", []) + c.get("args", []))
    return "redis-sentinel " in argv or "--sentinel" in argv


def chatd_setting(objs, c, name):
    """A chatd setting as the container gets it: env first, then envFrom ConfigMaps."""
    v = env_value(c, name)
    if v is not None:
        return v
    cms = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    for ef in c.get("envFrom", []):
        cm = cms.get(ef.get("configMapRef", {}).get("name"))
        if cm and name in cm.get("data", {}):
            return cm["data"][name]
    return None


# Overlays meant to survive the loss of any one node: their stores must be
# replicated (rule 14).
HA_OVERLAYS = {"production"}


def image_repo(image):
    name = image.rsplit("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    for p in ("docker.io/library/", "docker.io/"):
        if name.startswith(p):
            name = name[len(p):]
    return name


def image_tag(image):
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def under(path, root):
    path, root = path.rstrip("/"), root.rstrip("/")
    return path == root or path.startswith(root + "/")


def selects(sel, labels):
    ml = (sel or {}).get("matchLabels", {})
    if (sel or {}).get("matchExpressions"):
        return False  # not used here; treat as not matching rather than guess
    return all(labels.get(k) == v for k, v in ml.items())


def check(objs, kust, overlay):
    """Every problem of one render, as strings."""
    errs.clear()
    workloads = [o for o in objs if o["kind"] in WORKLOADS]
    by_name = {who(o): o for o in objs}
    hpas = [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]

    # 1. The image of every chatd container is the overlay's `images: chatd`
    # entry (what `kustomize edit set image chatd=...` edits).
    want = [i for i in kust.get("images", []) if i.get("name") == "chatd"]
    if len(want) != 1:
        err(overlay, "no `images:` entry for chatd: the chatd workloads' image would not be set")
    else:
        w = want[0]
        want_image = f"{w.get('newName', 'chatd')}:{w.get('newTag', 'latest')}"
        for o in workloads:
            if pod_labels(o).get("app.kubernetes.io/name") != "chatd":
                continue
            for c in pod_spec(o).get("containers", []):
                if c["image"] != want_image:
                    err(who(o), f"container {c['name']} runs image {c['image']}, the overlay's images: entry says {want_image}")
    for o in workloads:
        for c in containers(pod_spec(o)):
            if image_repo(c["image"]) == "chatd":
                err(who(o), f"container {c['name']} has the unresolved image name {c['image']}")

    # 2. Kafka is the version the project tests (scripts/kafka/pom.xml).
    pom = open(os.path.join(ROOT, "scripts/kafka/pom.xml")).read()
    tested = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom).group(1)
    for o in workloads:
        for c in containers(pod_spec(o)):
            if image_repo(c["image"]) == "apache/kafka" and image_tag(c["image"]) != tested:
                err(who(o), f"container {c['name']} runs {c['image']}; the project tests Kafka {tested} "
                            "(scripts/kafka/pom.xml, docs/DEPLOY.md 'Kafka versions')")

    # 3. Every persistent volume is mounted where the image keeps its data.
    # (Servers only: a Job running an image's tools keeps no data.)
    for o in workloads:
        if o["kind"] in ("Job", "CronJob"):
            continue
        spec = pod_spec(o)
        persistent = {t["metadata"]["name"] for t in o["spec"].get("volumeClaimTemplates", [])}
        persistent |= {v["name"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
        global CURRENT_FILES
        CURRENT_FILES = config_files(objs, spec)
        used = set()
        for c in spec.get("containers", []):
            mounts = [m for m in c.get("volumeMounts", []) if m["name"] in persistent]
            used |= {m["name"] for m in mounts}
            entry = None if is_sentinel(c) else IMAGES.get(image_repo(c["image"]))
            if entry is None:
                if mounts and not is_sentinel(c):
                    err(who(o), f"container {c['name']} ({c['image']}) mounts a persistent volume, but "
                                "scripts/k8s-assert.py does not know where that image keeps its data")
                continue
            data = entry["data"](c, objs)
            home = [m for m in mounts if under(data, m["mountPath"])]
            if not home:
                err(who(o), f"container {c['name']}: data directory {data} is on no persistent volume "
                            f"(mounts: {', '.join(m['mountPath'] for m in c.get('volumeMounts', [])) or 'none'})")
                continue
            m = max(home, key=lambda m: len(m["mountPath"]))
            for vol in entry["volumes"]:
                if vol.rstrip("/") != m["mountPath"].rstrip("/") and under(vol, m["mountPath"]) and under(data, vol):
                    err(who(o), f"container {c['name']}: data directory {data} is below the image's VOLUME {vol}, "
                                f"but the volume is mounted at {m['mountPath']}: the runtime mounts a "
                                "container-private volume at " + vol + " and the data never reaches the PVC")
        for name in persistent - used:
            err(who(o), f"persistent volume {name} is mounted by no container")

    # 4. No HPA target sets replicas (every apply would reset the autoscaler).
    for h in hpas:
        t = h["spec"]["scaleTargetRef"]
        tgt = by_name.get(f"{t['kind']}/{t['name']}")
        if tgt is not None and "replicas" in tgt["spec"]:
            err(who(tgt), f"sets spec.replicas ({tgt['spec']['replicas']}) but {who(h)} scales it: "
                          "every apply resets the autoscaler")

    # 5. Spread: a workload that runs (or may scale to) more than one pod
    # never puts them all on one node, hard.
    for o in workloads:
        if o["kind"] not in ("Deployment", "StatefulSet"):
            continue
        n = o["spec"].get("replicas", 1)
        for h in hpas:
            if h["spec"]["scaleTargetRef"]["name"] == o["metadata"]["name"]:
                n = max(n, h["spec"]["maxReplicas"])
        if n < 2:
            continue
        spec, labels = pod_spec(o), pod_labels(o)
        ok = any(t.get("topologyKey") == "kubernetes.io/hostname" and t.get("whenUnsatisfiable") == "DoNotSchedule"
                 and selects(t.get("labelSelector"), labels) for t in spec.get("topologySpreadConstraints", []))
        anti = spec.get("affinity", {}).get("podAntiAffinity", {})
        ok = ok or any(t.get("topologyKey") == "kubernetes.io/hostname" and selects(t.get("labelSelector"), labels)
                       for t in anti.get("requiredDuringSchedulingIgnoredDuringExecution", []))
        if not ok:
            err(who(o), f"up to {n} pods and no hard spread across nodes (required podAntiAffinity or a "
                        "DoNotSchedule topologySpreadConstraint on kubernetes.io/hostname selecting its pods)")

    # 6. Readiness tests readiness to serve: every long-running container
    # with a port has a readiness probe, and it is not a bare TCP connect
    # (a listening socket says nothing about the data behind it). Kafka's
    # must look at replication (kafka-ready.sh: in the ISR of its partitions).
    for o in workloads:
        if o["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        for c in pod_spec(o).get("containers", []):
            if not c.get("ports"):
                continue
            rp = c.get("readinessProbe")
            if not rp:
                err(who(o), f"container {c['name']} has no readinessProbe")
            elif "tcpSocket" in rp:
                err(who(o), f"container {c['name']}: readinessProbe is a TCP connect, which passes before the "
                            "process can serve (Kafka: while its partitions are under-replicated)")
            if image_repo(c["image"]) == "apache/kafka" and rp and "kafka-ready.sh" not in " ".join(
                    rp.get("exec", {}).get("command", [])):
                err(who(o), f"container {c['name']}: Kafka readiness must be kafka-ready.sh (in the ISR of "
                            "every partition it holds)")

    # 7. PDBs let unready pods be evicted (else one stuck pod blocks drains).
    for o in objs:
        if o["kind"] == "PodDisruptionBudget" and o["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
            err(who(o), "no unhealthyPodEvictionPolicy: AlwaysAllow: an unready pod it covers blocks every node drain")

    # 8. Pod Security "restricted", enforced and met by every container.
    ns = [o for o in objs if o["kind"] == "Namespace"]
    for o in ns:
        if o["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") != "restricted":
            err(who(o), "not labelled pod-security.kubernetes.io/enforce: restricted")
    for o in workloads:
        spec = pod_spec(o)
        psc = spec.get("securityContext", {})
        for k in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(k):
                err(who(o), f"{k}: true")
        for v in spec.get("volumes", []):
            if "hostPath" in v:
                err(who(o), f"hostPath volume {v['name']}")
        for c in containers(spec):
            sc = c.get("securityContext", {})
            eff = lambda k: sc.get(k, psc.get(k))  # noqa: E731
            bad = []
            if eff("runAsNonRoot") is not True:
                bad.append("runAsNonRoot is not true")
            if eff("runAsUser") == 0:
                bad.append("runAsUser 0")
            if sc.get("allowPrivilegeEscalation") is not False:
                bad.append("allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                bad.append("privileged")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                bad.append("capabilities do not drop ALL")
            if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
                bad.append("adds capabilities")
            if (eff("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
                bad.append("no seccompProfile RuntimeDefault")
            if bad:
                err(who(o), f"container {c['name']} fails Pod Security restricted: {'; '.join(bad)}")

    # 9. Secrets stay out of argv (ps on the node, /proc/PID/cmdline): no
    # command or args expands a variable that comes from a Secret.
    for o in workloads:
        for c in containers(pod_spec(o)):
            secret_vars = {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
            argv = " ".join(c.get("command", []) + c.get("args", []))
            for v in sorted(secret_vars):
                if f"$({v})" in argv:
                    err(who(o), f"container {c['name']} puts the Secret-backed ${v} into its argv")

    # 10. Network policies: every pod is selected by an ingress policy; a
    # backend (a StatefulSet other than chatd's own) admits only pods it
    # names, never "from anywhere".
    nps = [o for o in objs if o["kind"] == "NetworkPolicy" and "Ingress" in o["spec"].get("policyTypes", ["Ingress"])]
    for o in workloads:
        labels = pod_labels(o)
        mine = [p for p in nps if selects(p["spec"].get("podSelector"), labels)]
        if not mine:
            err(who(o), "no NetworkPolicy selects its pods: any pod in the cluster can connect to them")
            continue
        if o["kind"] == "StatefulSet" and labels.get("app.kubernetes.io/name") != "chatd":
            named = [p for p in mine if p["spec"].get("podSelector", {}).get("matchLabels")]
            if not named:
                err(who(o), "backend without a NetworkPolicy of its own (only the namespace default)")
            for p in named:
                for rule in p["spec"].get("ingress", []):
                    froms = rule.get("from", [])
                    if not froms or any("podSelector" not in f or not f["podSelector"].get("matchLabels") for f in froms):
                        err(who(p), f"admits {who(o)}'s pods from unnamed sources: a backend admits named pods only")

    # 11. Redis refuses writes when full instead of being OOM-killed: a
    # refusing maxmemory-policy and a maxmemory below the container's limit.
    for o in workloads:
        spec = pod_spec(o)
        files = config_files(objs, spec)
        for c in spec.get("containers", []):
            if image_repo(c["image"]) != "redis" or is_sentinel(c):
                continue
            argv = " ".join(c.get("command", []) + c.get("args", []))
            conf = "\n".join(t for p, t in files.items() if p in argv)
            conf = "\n".join(line for line in conf.splitlines() if not line.lstrip().startswith("#"))
            text = argv + "\n" + conf
            pol = re.search(r"maxmemory-policy\"?\s+\"?(\S+?)\"?(\s|$)", text)
            if not pol or pol.group(1) != "noeviction":
                err(who(o), f"container {c['name']}: maxmemory-policy is not noeviction (chatd's keys must not be evicted)")
            limit = c.get("resources", {}).get("limits", {}).get("memory")
            from_limit = any(e.get("valueFrom", {}).get("resourceFieldRef", {}).get("resource") == "limits.memory"
                             for e in c.get("env", []))
            if not re.search(r"maxmemory\s", text.replace("maxmemory-policy", "")):
                err(who(o), f"container {c['name']}: no maxmemory: Redis grows to its memory limit and is "
                            "OOM-killed instead of refusing writes")
            elif not limit or not from_limit:
                err(who(o), f"container {c['name']}: maxmemory is not derived from the container's memory limit "
                            "(env from resourceFieldRef limits.memory)")

    # 12. Jobs are immutable: a Job's pod template must not name a generated
    # (content-hashed) ConfigMap or Secret, or the next apply after a config
    # change fails on it.
    gen = {o["metadata"]["name"] for o in objs if o["kind"] in ("ConfigMap", "Secret") and HASHED.search(o["metadata"]["name"])}
    for o in workloads:
        if o["kind"] not in ("Job", "CronJob"):
            continue
        text = yaml.safe_dump(pod_spec(o))
        for name in sorted(gen):
            if re.search(r"\b" + re.escape(name) + r"\b", text):
                err(who(o), f"pod template names the generated {name}: a Job's template is immutable, so "
                            "the first apply after that config changes fails")

    # 13. chatd waits for its topics: every chatd workload's pods run the
    # topic init container (ensure-topics.sh) before chatd.
    for o in workloads:
        if pod_labels(o).get("app.kubernetes.io/name") != "chatd" or o["kind"] in ("Job", "CronJob"):
            continue
        inits = pod_spec(o).get("initContainers", [])
        if not any("ensure-topics.sh" in " ".join(i.get("command", []) + i.get("args", [])) for i in inits):
            err(who(o), "no ensure-topics init container: chatd starts before its topics exist and nothing "
                        "creates them again if they are lost")

    # 14. Disruption budgets: anything running two or more pods (stores
    # included) is covered by a PDB, so a drain takes them one at a time.
    for o in workloads:
        if o["kind"] not in ("Deployment", "StatefulSet"):
            continue
        n = o["spec"].get("replicas", 1)
        for h in hpas:
            if h["spec"]["scaleTargetRef"]["name"] == o["metadata"]["name"]:
                n = max(n, h["spec"]["minReplicas"] if "minReplicas" in h["spec"] else 1)
        if n >= 2 and not any(p["kind"] == "PodDisruptionBudget" and selects(p["spec"].get("selector"), pod_labels(o))
                              for p in objs):
            err(who(o), f"{n} pods and no PodDisruptionBudget: a node drain may evict all of them at once")

    # 18. A hard spread counts only nodes that can take the pod. With the
    # default nodeTaintsPolicy (Ignore) a tainted node is a domain too: a
    # cordoned node being drained, control-plane or dedicated nodes hold 0
    # pods, so maxSkew caps every other node at 1 and the evicted pod's
    # replacement (or a 4th gateway on 3 workers) stays Pending.
    for o in workloads:
        for t in pod_spec(o).get("topologySpreadConstraints", []):
            if t.get("whenUnsatisfiable") == "DoNotSchedule" and t.get("nodeTaintsPolicy") != "Honor":
                err(who(o), f"DoNotSchedule spread on {t.get('topologyKey')} without nodeTaintsPolicy: Honor: "
                            "tainted nodes (cordoned, control plane) count as empty domains and pods stay Pending")

    # 19. A start that copies a database (pg_basebackup) is not killed by
    # liveness before postgres listens: a startupProbe allows an hour or
    # more (a large copy), or the copy restarts every minute, for ever.
    for o in workloads:
        for c in pod_spec(o).get("containers", []):
            if "pg_basebackup" not in " ".join(c.get("command", []) + c.get("args", [])) or "livenessProbe" not in c:
                continue
            sp = c.get("startupProbe") or {}
            if sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3) < 3600:
                err(who(o), f"container {c['name']} copies a base backup at start but liveness may kill it within "
                            "the hour (no startupProbe allowing >= 3600 s)")

    # 20. A pod that runs as the namespace's default service account makes
    # no Kubernetes API calls: it mounts no token (the gateways face the
    # internet; a compromised process would get the account's credentials).
    for o in workloads:
        spec = pod_spec(o)
        if spec.get("serviceAccountName", "default") == "default" and spec.get("automountServiceAccountToken") is not False:
            err(who(o), "mounts the default service account's token (automountServiceAccountToken is not false) "
                        "but makes no API calls")

    if os.path.basename(os.path.normpath(overlay)) in HA_OVERLAYS:
        check_ha_stores(objs, workloads)
        check_ha_postgres(objs, workloads)
    check_alerting(objs)
    return list(errs)


def check_ha_stores(objs, workloads):
    """15. Stores that survive one node (PostgreSQL: 16, below): Redis with a replica, at least three
    Sentinels spread over nodes whose quorum is a majority, and every chatd
    container asking those Sentinels (not one Redis host) for the master
    they monitor."""
    redis_pods, sentinels = 0, []
    for o in workloads:
        if o["kind"] != "StatefulSet":
            continue
        for c in pod_spec(o).get("containers", []):
            if image_repo(c["image"]) != "redis":
                continue
            if not is_sentinel(c):
                redis_pods = max(redis_pods, o["spec"].get("replicas", 1))
                continue
            argv = " ".join(c.get("command", []) + c.get("args", []))
            m = re.search(r"sentinel monitor (\S+) (\S+) (\d+) (\d+)", argv)
            n = o["spec"].get("replicas", 1)
            port = next((p["containerPort"] for p in c.get("ports", [])), 26379)
            if not m:
                err(who(o), "runs Sentinel but monitors no master (no `sentinel monitor NAME HOST PORT QUORUM`)")
                continue
            q = int(m.group(4))
            if n < 3:
                err(who(o), f"{n} Sentinel(s): fewer than 3 cannot keep a majority after losing one")
            if not (n // 2 < q <= n):
                err(who(o), f"Sentinel quorum {q} of {n}: not a majority (two sides of a partition could both fail over)"
                            if q <= n // 2 else f"Sentinel quorum {q} of {n}: more than there are Sentinels, no failover ever")
            sentinels.append((o, m.group(1), port))
    if redis_pods < 2:
        err("Redis", f"{redis_pods} Redis data pod(s): no replica to fail over to (a node loss stops the chat)")
    if not sentinels:
        err("Redis", "no Sentinels: nothing fails Redis over")
    for o in workloads:
        if o["kind"] == "StatefulSet" and any(image_repo(c["image"]) in ("redis", "postgres")
                                              for c in pod_spec(o).get("containers", [])) \
                and not any(p["kind"] == "PodDisruptionBudget" and selects(p["spec"].get("selector"), pod_labels(o))
                            for p in objs):
            err(who(o), "a store without a PodDisruptionBudget: a node drain may take its pods together")
    names = {name for _, name, _ in sentinels}
    for o in workloads:
        if pod_labels(o).get("app.kubernetes.io/name") != "chatd":
            continue
        for c in pod_spec(o).get("containers", []):
            lst = chatd_setting(objs, c, "CHATD_REDIS_SENTINELS") or ""
            master = chatd_setting(objs, c, "CHATD_REDIS_MASTER_NAME") or "mymaster"
            addrs = [a.strip() for a in lst.split(",") if a.strip()]
            if len(addrs) < 3:
                err(who(o), f"container {c['name']}: CHATD_REDIS_SENTINELS names {len(addrs)} Sentinel(s): "
                            "chatd talks to one Redis host and does not follow a failover")
                continue
            for a in addrs:
                host, _, port = a.rpartition(":") if ":" in a else (a, "", "26379")
                pod, _, svc = host.partition(".")
                ok = any(pod.startswith(so["metadata"]["name"] + "-") and pod[len(so["metadata"]["name"]) + 1:].isdigit()
                         and int(pod[len(so["metadata"]["name"]) + 1:]) < so["spec"].get("replicas", 1)
                         and svc.split(".")[0] == so["spec"].get("serviceName") and str(sp) == port
                         for so, _, sp in sentinels)
                if not ok:
                    err(who(o), f"container {c['name']}: CHATD_REDIS_SENTINELS entry {a} is no Sentinel pod of this render")
            if sentinels and master not in names:
                err(who(o), f"container {c['name']}: CHATD_REDIS_MASTER_NAME {master} is not what the Sentinels "
                            f"monitor ({', '.join(sorted(names))})")


def secret_text(o, key):
    import base64
    if key in o.get("stringData", {}):
        return o["stringData"][key]
    if key in o.get("data", {}):
        return base64.b64decode(o["data"][key]).decode()
    return None


def check_alerting(objs):
    """A Prometheus that loads alerting rules sends them to Alertmanager pods
    of this render, and that Alertmanager's config routes them to a receiver
    that notifies (the alerts otherwise notify nobody)."""
    for p in [o for o in objs if o["kind"] in WORKLOADS]:
        spec = pod_spec(p)
        for c in containers(spec):
            if image_repo(c.get("image", "")) != "prom/prometheus":
                continue
            files = config_files(objs, spec)
            cfg = yaml.safe_load(files.get(flag_value(c, "--config.file") or "", "") or "{}") or {}
            if not cfg.get("rule_files"):
                continue
            targets = [t for am in (cfg.get("alerting") or {}).get("alertmanagers", [])
                       for sc in am.get("static_configs", []) for t in sc.get("targets", [])]
            if not targets:
                err(who(p), "loads alerting rules but sends them to no Alertmanager (no alerting: targets)")
            for t in targets:
                check_am_target(objs, p, t)


def check_am_target(objs, prom, target):
    host, _, port = target.rpartition(":")
    pod, _, svc = host.partition(".")
    sts = [o for o in objs if o["kind"] == "StatefulSet" and o["spec"].get("serviceName") == svc.split(".")[0]
           and pod.startswith(o["metadata"]["name"] + "-")]
    if not sts:
        err(who(prom), f"Alertmanager target {target} is no StatefulSet pod of this render")
        return
    o = sts[0]
    idx = pod[len(o["metadata"]["name"]) + 1:]
    if not idx.isdigit() or int(idx) >= o["spec"].get("replicas", 1):
        err(who(prom), f"Alertmanager target {target}: {who(o)} has no pod {pod}")
    services = [s for s in objs if s["kind"] == "Service" and s["metadata"]["name"] == svc.split(".")[0]]
    if not services or not selects({"matchLabels": services[0]["spec"].get("selector", {})}, pod_labels(o)) \
            or not any(str(sp.get("port")) == port for sp in services[0]["spec"].get("ports", [])):
        err(who(prom), f"Alertmanager target {target}: no Service {svc} selecting {who(o)} on port {port}")
    spec = pod_spec(o)
    for c in containers(spec):
        if image_repo(c.get("image", "")) != "prom/alertmanager":
            continue
        path = flag_value(c, "--config.file") or "/etc/alertmanager/alertmanager.yml"
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        text = None
        for m in c.get("volumeMounts", []):
            sec = vols.get(m["name"], {}).get("secret", {}).get("secretName")
            if sec and under(path, m["mountPath"]):
                so = next((x for x in objs if x["kind"] == "Secret" and x["metadata"]["name"] == sec), None)
                text = so and secret_text(so, os.path.relpath(path, m["mountPath"]))
        text = text or config_files(objs, spec).get(path)
        if not text:
            err(who(o), f"Alertmanager config {path} is in no Secret or ConfigMap of this render")
            continue
        am = yaml.safe_load(text) or {}
        notifies = {r["name"] for r in am.get("receivers", [])
                    if any(k.endswith("_configs") and r[k] for k in r)}
        routes, stack = [], [am.get("route") or {}]
        while stack:
            r = stack.pop()
            routes.append(r.get("receiver"))
            stack += r.get("routes", [])
        for r in routes:
            if r is not None and r not in notifies:
                err(who(o), f"routes alerts to receiver {r!r}, which notifies nobody")


def find(objs, kind, name):
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def container(objs, kind, name):
    return pod_spec(find(objs, kind, name))["containers"][0]


def _m_kafka_mount(objs):
    for m in container(objs, "StatefulSet", "kafka")["volumeMounts"]:
        if m["name"] == "data":
            m["mountPath"] = "/var/lib/kafka"


def _m_redis_argv(objs):
    c = container(objs, "StatefulSet", "redis")
    c["args"] = ["--requirepass", "$(REDISCLI_AUTH)", "--maxmemory-policy", "noeviction", "--maxmemory", "1gb"]


def _m_job(objs):
    cm = next(o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("chatd-config"))
    c = container(objs, "StatefulSet", "chatd-gateway")
    objs.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "topics"},
                 "spec": {"template": {"metadata": {"labels": {"app.kubernetes.io/name": "chatd"}},
                                       "spec": {"restartPolicy": "OnFailure", "securityContext": c.get("securityContext", {}),
                                                "containers": [{**c, "envFrom": [{"configMapRef": {"name": cm}}]}]}}}})


def _m_spread(objs):
    for t in pod_spec(find(objs, "StatefulSet", "chatd-gateway"))["topologySpreadConstraints"]:
        t["whenUnsatisfiable"] = "ScheduleAnyway"


def _m_maxmemory(objs):
    c = container(objs, "StatefulSet", "redis")
    c["args"] = [a.replace("maxmemory %smb", "x %s") for a in c["args"]]


def _m_alerting(objs):
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("prometheus-config"))
    cfg = yaml.safe_load(cm["data"]["prometheus.yml"])
    cfg.pop("alerting")
    cm["data"]["prometheus.yml"] = yaml.safe_dump(cfg)


def _m_null_receiver(objs):
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("alertmanager-config"))
    am = yaml.safe_load(cm["data"]["alertmanager.yml"])
    am["receivers"] = [{"name": r["name"]} for r in am["receivers"]]
    cm["data"]["alertmanager.yml"] = yaml.safe_dump(am)


# One defect per rule, made in a copy of a good render: each must be reported
# with the given words (the rules cannot silently stop checking).
MUTATIONS = [
    ("image", lambda o: container(o, "StatefulSet", "chatd-gateway").update(image="localhost/chatd:other"),
     "the overlay's images: entry says"),
    ("kafka version", lambda o: container(o, "StatefulSet", "kafka").update(image="apache/kafka:3.7.1"),
     "the project tests Kafka"),
    ("kafka mount", _m_kafka_mount, "below the image's VOLUME /var/lib/kafka/data"),
    ("prometheus emptyDir", lambda o: [v.update({"emptyDir": {}}) or v.pop("persistentVolumeClaim")
                                       for v in pod_spec(find(o, "Deployment", "prometheus"))["volumes"]
                                       if v["name"] == "data"], "is on no persistent volume"),
    ("hpa replicas", lambda o: find(o, "Deployment", "chatd-classifier")["spec"].update(replicas=3),
     "every apply resets the autoscaler"),
    ("spread", _m_spread, "no hard spread across nodes"),
    ("tcp readiness", lambda o: container(o, "StatefulSet", "kafka").update(readinessProbe={"tcpSocket": {"port": 9092}}),
     "readinessProbe is a TCP connect"),
    ("spread taints", lambda o: pod_spec(find(o, "Deployment", "chatd-classifier"))["topologySpreadConstraints"][0]
     .pop("nodeTaintsPolicy"), "count as empty domains"),
    ("sa token", lambda o: pod_spec(find(o, "StatefulSet", "chatd-gateway")).pop("automountServiceAccountToken"),
     "mounts the default service account's token"),
    ("pdb policy", lambda o: find(o, "PodDisruptionBudget", "kafka")["spec"].pop("unhealthyPodEvictionPolicy"),
     "blocks every node drain"),
    ("pod security", lambda o: container(o, "StatefulSet", "redis").pop("securityContext"),
     "fails Pod Security restricted"),
    ("argv secret", _m_redis_argv, "Secret-backed $REDISCLI_AUTH into its argv"),
    ("network policy", lambda o: o.remove(find(o, "NetworkPolicy", "kafka")), "backend without a NetworkPolicy"),
    ("maxmemory", _m_maxmemory, "no maxmemory"),
    ("job", _m_job, "a Job's template is immutable"),
    ("topics init", lambda o: pod_spec(find(o, "Deployment", "chatd-classifier")).pop("initContainers"),
     "no ensure-topics init container"),
    ("alerting", _m_alerting, "sends them to no Alertmanager"),
    ("alertmanager replicas", lambda o: find(o, "StatefulSet", "alertmanager")["spec"].update(replicas=1),
     "has no pod alertmanager-1"),
    ("null receiver", _m_null_receiver, "which notifies nobody"),
]


def check_ha_postgres(objs, workloads):
    """16. PostgreSQL on two nodes: every chatd container's CHATD_PG names
    two or more hosts, each a pod of a PostgreSQL StatefulSet of the render,
    with target_session_attrs=read-write (libpq then keeps the primary and
    finds a promoted standby), and those pods cannot share a node."""
    pgs = {o["metadata"]["name"]: o for o in workloads if o["kind"] == "StatefulSet"
           and any(image_repo(c["image"]) == "postgres" for c in pod_spec(o).get("containers", []))}
    named = set()
    for o in workloads:
        if pod_labels(o).get("app.kubernetes.io/name") != "chatd":
            continue
        for c in pod_spec(o).get("containers", []):
            kv = dict(re.findall(r"(\w+)=(\S+)", chatd_setting(objs, c, "CHATD_PG") or ""))
            hosts = [h for h in kv.get("host", "").split(",") if h]
            if len(hosts) < 2:
                err(who(o), f"container {c['name']}: CHATD_PG names {len(hosts)} PostgreSQL host(s): "
                            "no standby to move to")
            if kv.get("target_session_attrs") != "read-write":
                err(who(o), f"container {c['name']}: CHATD_PG without target_session_attrs=read-write: "
                            "libpq may settle on a read-only standby")
            for h in hosts:
                pod, _, svc = h.partition(".")
                sts = next((x for n, x in pgs.items() if pod.startswith(n + "-") and pod[len(n) + 1:].isdigit()
                            and int(pod[len(n) + 1:]) < x["spec"].get("replicas", 1)
                            and svc.split(".")[0] == x["spec"].get("serviceName")), None)
                if sts is None:
                    err(who(o), f"container {c['name']}: CHATD_PG host {h} is no PostgreSQL pod of this render")
                else:
                    named.add(sts["metadata"]["name"])
    for n in sorted(named):
        anti = pod_spec(pgs[n]).get("affinity", {}).get("podAntiAffinity", {})
        terms = [t for t in anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
                 if t.get("topologyKey") == "kubernetes.io/hostname"]
        if not all(any(selects(t.get("labelSelector"), pod_labels(pgs[m])) for t in terms) for m in named):
            err(who(pgs[n]), "may share a node with another PostgreSQL pod chatd uses (no required "
                             "podAntiAffinity on kubernetes.io/hostname selecting them all)")


def _m_config(objs, key, value):
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("chatd-config"))
    if value is None:
        cm["data"].pop(key)
    else:
        cm["data"][key] = value


def _m_quorum(objs):
    c = container(objs, "StatefulSet", "redis-sentinel")
    c["args"] = [re.sub(r"(sentinel monitor chatd \S+ 6379) 2", r"\1 1", a) for a in c["args"]]


# The HA overlays' stores (rule 15), same way.
HA_MUTATIONS = [
    ("redis replica", lambda o: find(o, "StatefulSet", "redis")["spec"].update(replicas=1), "no replica to fail over to"),
    ("sentinel count", lambda o: find(o, "StatefulSet", "redis-sentinel")["spec"].update(replicas=2), "fewer than 3"),
    ("sentinel quorum", _m_quorum, "not a majority"),
    ("chatd single redis", lambda o: _m_config(o, "CHATD_REDIS_SENTINELS", None), "does not follow a failover"),
    ("sentinel address", lambda o: _m_config(o, "CHATD_REDIS_SENTINELS", "redis-sentinel-0.redis-sentinel:26379,"
                                             "redis-sentinel-1.redis-sentinel:26379,redis-sentinel-3.redis-sentinel:26379"),
     "is no Sentinel pod of this render"),
    ("master name", lambda o: _m_config(o, "CHATD_REDIS_MASTER_NAME", "mymaster"), "is not what the Sentinels monitor"),
    ("store pdb", lambda o: o.remove(find(o, "PodDisruptionBudget", "redis")), "a store without a PodDisruptionBudget"),
    ("pdb", lambda o: o.remove(find(o, "PodDisruptionBudget", "redis-sentinel")), "3 pods and no PodDisruptionBudget"),
    ("pg single host", lambda o: _m_config(o, "CHATD_PG", "host=postgres port=5432 dbname=chatd user=chatd "
                                            "target_session_attrs=read-write"), "no standby to move to"),
    ("pg read-write", lambda o: _m_config(o, "CHATD_PG", "host=postgres-0.postgres,postgres-standby-0.postgres-standby "
                                          "dbname=chatd"), "without target_session_attrs=read-write"),
    ("pg host", lambda o: _m_config(o, "CHATD_PG", "host=postgres-0.postgres,postgres-1.postgres "
                                    "target_session_attrs=read-write"), "postgres-1.postgres is no PostgreSQL pod"),
    ("pg spread", lambda o: pod_spec(find(o, "StatefulSet", "postgres-standby")).pop("affinity"),
     "may share a node with another PostgreSQL pod"),
    ("pg copy liveness", lambda o: container(o, "StatefulSet", "postgres-standby").pop("startupProbe"),
     "copies a base backup at start but liveness may kill it"),
    ("pg pdb", lambda o: o.remove(find(o, "PodDisruptionBudget", "postgres")), "a store without a PodDisruptionBudget"),
]


def self_test(objs, kust, overlay):
    import copy
    bad = 0
    if check(objs, kust, overlay):
        print("k8s-assert: self-test needs a render without problems", file=sys.stderr)
        return 1
    muts = MUTATIONS + (HA_MUTATIONS if os.path.basename(os.path.normpath(overlay)) in HA_OVERLAYS else [])
    for name, mutate, want in muts:
        o = copy.deepcopy(objs)
        mutate(o)
        got = check(o, kust, overlay)
        if not any(want in e for e in got):
            print(f"k8s-assert: self-test {name}: no problem saying {want!r} (got: {got})", file=sys.stderr)
            bad = 1
    if not bad:
        print(f"k8s-assert: self-test: each of {len(muts)} planted defects reported")
    return bad


def main():
    test = sys.argv[1] == "--self-test"
    render, overlay = sys.argv[1 + test], sys.argv[2 + test]
    objs = [o for o in yaml.safe_load_all(open(render)) if o]
    kust = yaml.safe_load(open(os.path.join(overlay, "kustomization.yaml")))
    if test:
        return self_test(objs, kust, overlay)
    check(objs, kust, overlay)
    for e in errs:
        print(f"k8s-assert: {e}", file=sys.stderr)
    name = os.path.basename(os.path.normpath(overlay))
    if errs:
        print(f"k8s-assert: {name}: {len(errs)} problem(s)", file=sys.stderr)
        return 1
    print(f"k8s-assert: {name}: {len(objs)} objects, {20 if name in HA_OVERLAYS else 18} rules, no problem")
    return 0


if __name__ == "__main__":
    sys.exit(main())
