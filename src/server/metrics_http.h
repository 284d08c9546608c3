/*
 * metrics_http.h -- the --metrics endpoint: GET /metrics in the Prometheus
 * text format (metrics.h), served with libevent's evhttp on a worker's
 * event base from the socket the master bound (see metrics_http.c).
 */
#ifndef LUASMTPD_METRICS_HTTP_H
#define LUASMTPD_METRICS_HTTP_H

struct event_base;
struct metrics_http;

/* Accepts on fd, a bound and listening socket (owned from now on); NULL on error. */
struct metrics_http	*metrics_http_create(struct event_base *base, int fd);
void			 metrics_http_destroy(struct metrics_http *mh);	/* NULL: no-op */

#endif
