/* loopstat: how busy the process's event loop is, for /metrics.
 *
 * chatd runs everything on one libuv loop, so a callback that runs long
 * (a fan-out burst to thousands of sockets, a big Kafka batch) delays every
 * other socket, timer and backend reply of the process. Once per loop
 * iteration, from a prepare handle (it runs just before the loop blocks in
 * epoll), the time spent running callbacks since the previous iteration,
 * i.e. wall time minus the time blocked (libuv's UV_METRICS_IDLE_TIME), is
 * observed into chatd_loop_iteration_seconds and added to
 * chatd_loop_busy_seconds_total: rate() of that is the loop's utilisation
 * (1 = saturated), and the histogram's tail is the delay a client request
 * can meet before its callback runs. Two clock reads per iteration.
 */
#ifndef CHATD_LOOPSTAT_H
#define CHATD_LOOPSTAT_H

#include <uv.h>

/* Before uv_run. One loop per process. 0 or a libuv error (logged). */
int loopstat_start(uv_loop_t *loop);
/* Closes the handle (shutdown, before the final uv_run). */
void loopstat_stop(void);

#endif
