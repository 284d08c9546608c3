/*
 * metrics_http.c -- GET /metrics over libevent's evhttp, on the socket that
 * --metrics bound.
 *
 * Owns an evhttp on a worker's event base (or the single process's) that
 * accepts on the shared metrics socket, as the workers accept on the SMTP
 * listeners: whichever worker the kernel hands a scrape to answers it with
 * metrics_render(), which reads the whole shared region, so every answer is
 * the sum over all workers, never the view of the one that answered.
 * GET /metrics only: other paths get 404, other methods 405.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "log.h"
#include "metrics.h"
#include "metrics_http.h"

#define METRICS_HTTP_TIMEOUT	10	/* seconds for a request, and for its reply */
#define METRICS_CONTENT_TYPE	"text/plain; version=0.0.4; charset=utf-8"

struct metrics_http {
	struct evhttp	*http;
};

static void
metrics_http_cb(struct evhttp_request *req, void *arg)
{
	struct evbuffer	*out;
	const char	*path;
	char		*text;
	size_t		 len;

	(void)arg;
	path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
	if (path == NULL || strcmp(path, "/metrics") != 0) {
		evhttp_send_error(req, HTTP_NOTFOUND, NULL);
		return;
	}
	if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET");
		evhttp_send_error(req, 405, "Method Not Allowed");
		return;
	}
	if ((text = metrics_render(&len)) == NULL ||
	    (out = evbuffer_new()) == NULL) {
		free(text);
		evhttp_send_error(req, HTTP_INTERNAL, "Out of memory");
		return;
	}
	if (evbuffer_add(out, text, len) == -1) {
		free(text);
		evbuffer_free(out);
		evhttp_send_error(req, HTTP_INTERNAL, "Out of memory");
		return;
	}
	free(text);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
	    METRICS_CONTENT_TYPE);
	evhttp_send_reply(req, HTTP_OK, "OK", out);
	evbuffer_free(out);
}

struct metrics_http *
metrics_http_create(struct event_base *base, int fd)
{
	struct metrics_http *mh;

	if ((mh = calloc(1, sizeof(*mh))) == NULL) {
		close(fd);
		return NULL;
	}
	if (evutil_make_socket_nonblocking(fd) == -1 ||
	    (mh->http = evhttp_new(base)) == NULL)
		goto fail;
	evhttp_set_timeout(mh->http, METRICS_HTTP_TIMEOUT);
	evhttp_set_max_headers_size(mh->http, 8192);
	evhttp_set_max_body_size(mh->http, 0);
	/* every method reaches the callback, which answers 405 */
	evhttp_set_allowed_methods(mh->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
	    EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	    EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT |
	    EVHTTP_REQ_PATCH);
	evhttp_set_gencb(mh->http, metrics_http_cb, NULL);
	if (evhttp_accept_socket(mh->http, fd) == -1) {
		log_error(0, "metrics: cannot accept on the metrics socket");
		goto fail;
	}
	return mh;
fail:
	close(fd);	/* the evhttp did not take it */
	metrics_http_destroy(mh);
	return NULL;
}

void
metrics_http_destroy(struct metrics_http *mh)
{
	if (mh == NULL)
		return;
	if (mh->http != NULL)
		evhttp_free(mh->http);	/* closes its copy of the socket */
	free(mh);
}
