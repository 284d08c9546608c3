/*
 * test_log.c -- log.c: JSON escaping, UTF-8 checks, text quoting of record
 * values, records cut at the buffer's end, and the line shapes.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "tap.h"

static char	last[LOG_LINE_MAX + 1];
static int	scheduled;

static void
schedule(void *arg)
{
	(void)arg;
	scheduled++;
}

/* What stderr (a temporary file) holds now. */
static const char *
err_text(int fd)
{
	static char	buf[16384];
	ssize_t		n = pread(fd, buf, sizeof(buf) - 1, 0);

	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

static void
keep(void *arg, enum log_level level, const char *line)
{
	(void)arg, (void)level;
	snprintf(last, sizeof(last), "%s", line);
}

/* log_json_escape of a string, NUL-terminated, into a static buffer of cap octets */
static const char *
esc(const char *s, size_t len, size_t cap)
{
	static char	out[256];
	size_t		n = log_json_escape(out, cap, s, len);

	out[n] = '\0';
	return out;
}

#define ESC(s)	esc((s), sizeof(s) - 1, 200)

/* What follows the line's head "STAMP LEVEL " (text). */
static const char *
body(void)
{
	return strlen(last) > 27 ? last + 27 : "";
}

int
main(void)
{
	struct log_rec	r;
	char		big[3000];

	/* JSON escaping */
	CHECK_STR(ESC("plain text"), "plain text");
	CHECK_STR(ESC("a\"b\\c"), "a\\\"b\\\\c");
	CHECK_STR(ESC("l1\nl2\r\t"), "l1\\nl2\\r\\t");
	CHECK_STR(ESC("\x01\x1f\x7f"), "\\u0001\\u001f\\u007f");
	CHECK_STR(esc("a\0b", 3, 200), "a\\u0000b");			/* a NUL inside */
	CHECK_STR(ESC("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa7"),	/* valid UTF-8 kept */
	    "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa7");
	CHECK_STR(ESC("\xff"), "\\ufffd");				/* never a UTF-8 octet */
	CHECK_STR(ESC("\xc3"), "\\ufffd");				/* truncated at the end */
	CHECK_STR(ESC("\xc3(x"), "\\ufffd(x");			/* bad continuation */
	CHECK_STR(ESC("\xc0\xaf"), "\\ufffd\\ufffd");			/* overlong '/' */
	CHECK_STR(ESC("\xe0\x80\xaf"), "\\ufffd\\ufffd\\ufffd");	/* overlong, 3 octets */
	CHECK_STR(ESC("\xed\xa0\x80"), "\\ufffd\\ufffd\\ufffd");	/* a UTF-16 surrogate */
	CHECK_STR(ESC("\xf4\x90\x80\x80"), "\\ufffd\\ufffd\\ufffd\\ufffd");	/* past U+10FFFF */
	CHECK_STR(ESC("\x80x"), "\\ufffdx");				/* a lone continuation */
	/* a full buffer never splits an escape or a character */
	CHECK_STR(esc("ab\"c", 4, 3), "ab");
	CHECK_STR(esc("a\x01", 2, 6), "a");
	CHECK_STR(esc("a\xc3\xa9", 3, 2), "a");
	CHECK_STR(esc("a\xc3\xa9", 3, 3), "a\xc3\xa9");
	CHECK_INT((int)log_json_escape(big, 0, "x", 1), 0);

	CHECK_INT((int)log_utf8_len((const unsigned char *)"a", 1), 1);
	CHECK_INT((int)log_utf8_len((const unsigned char *)"\xc3\xa9", 2), 2);
	CHECK_INT((int)log_utf8_len((const unsigned char *)"\xc3\xa9", 1), 0);
	CHECK_INT((int)log_utf8_len((const unsigned char *)"\xf0\x9f\x93\xa7", 4), 4);

	log_set_sink(keep, NULL);

	/* text records: plain values as they are, others quoted and escaped */
	log_set_format(LOG_TEXT);
	log_rec_begin(&r, "transaction");
	log_rec_str(&r, "helo", "client.example");
	log_rec_str(&r, "user", NULL);				/* left out */
	log_rec_str(&r, "end", "session ended");
	log_rec_str(&r, "x", "q\"b\\s\n\x01\xff\xc3\xa9");
	log_rec_str(&r, "empty", "");
	log_rec_uint(&r, "size", 1234);
	log_rec_ms(&r, "duration", 5);
	log_rec_ms(&r, "long", 61234);
	log_rec_rcpt(&r, "b@example.net", 250, "2.1.5");
	log_rec_rcpt(&r, "\"x y\"@example.net", 550, NULL);
	log_rec_rcpt(&r, "", 250, "2.1.5");
	log_rec_word(&r, "result", "accepted");
	log_rec_word(&r, "none", "");				/* left out */
	log_rec_emit(&r, LOG_INFO, 0xa1);
	CHECK_STR(body(), "[00000000000000a1] transaction helo=client.example "
	    "end=\"session ended\" x=\"q\\\"b\\\\s\\n\\x01\\xff\xc3\xa9\" empty=\"\" "
	    "size=1234 duration=0.005 long=61.234 to=<b@example.net>:250/2.1.5 "
	    "to=\"<\\\"x y\\\"@example.net>:550\" to=<>:250/2.1.5 result=accepted");
	CHECK(strncmp(last + 20, " info  ", 7) == 0);

	/* JSON records: the same fields, typed; recipients an array */
	log_set_format(LOG_JSON);
	log_rec_begin(&r, "transaction");
	log_rec_str(&r, "helo", "c\"x");
	log_rec_rcpt(&r, "b@example.net", 250, "2.1.5");
	log_rec_rcpt(&r, "c\xff@example.net", 550, "5.1.1");
	log_rec_uint(&r, "size", 7);
	log_rec_ms(&r, "duration", 1500);
	log_rec_word(&r, "result", "accepted");
	log_rec_emit(&r, LOG_WARN, 0xa1);
	CHECK(strncmp(last, "{\"time\":\"", 9) == 0);
	CHECK_STR(strstr(last, "\",\"level\""), "\",\"level\":\"warn\",\"session\":\"00000000000000a1\","
	    "\"event\":\"transaction\",\"helo\":\"c\\\"x\",\"rcpts\":[{\"to\":\"b@example.net\","
	    "\"code\":250,\"enhanced\":\"2.1.5\"},{\"to\":\"c\\ufffd@example.net\",\"code\":550,"
	    "\"enhanced\":\"5.1.1\"}],\"size\":7,\"duration\":1.500,\"result\":\"accepted\"}");
	/* the array closes at the end too */
	log_rec_begin(&r, "t");
	log_rec_rcpt(&r, "b@x", 250, NULL);
	log_rec_emit(&r, LOG_INFO, 0);
	CHECK(strstr(last, ",\"event\":\"t\",\"rcpts\":[{\"to\":\"b@x\",\"code\":250}]}") != NULL);

	/* plain messages: escaped in JSON, controls replaced in text */
	log_msg(LOG_INFO, 0, "raw %s", "a\x01\xff\"b");
	CHECK(strstr(last, ",\"msg\":\"raw a\\u0001\\ufffd\\\"b\"}") != NULL);
	log_set_tag("worker3[42]");
	log_msg(LOG_ERROR, 7, "x");
	CHECK(strstr(last, "\"level\":\"error\",\"proc\":\"worker3[42]\",\"session\":\"0000000000000007\","
	    "\"msg\":\"x\"}") != NULL);
	log_set_format(LOG_TEXT);
	log_msg(LOG_INFO, 7, "a\nb\x01");
	CHECK_STR(body(), "worker3[42] [0000000000000007] a b?");
	log_set_tag(NULL);

	/* a record that does not fit: fields left out whole, marked cut, still one valid line */
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	log_set_format(LOG_JSON);
	log_rec_begin(&r, "transaction");
	log_rec_str(&r, "from", big);
	for (int i = 0; i < 10; i++)
		log_rec_rcpt(&r, big + 2500, 250, "2.1.5");	/* 499 octets each */
	log_rec_uint(&r, "size", 1);
	log_rec_emit(&r, LOG_INFO, 1);
	CHECK(strlen(last) <= LOG_LINE_MAX);
	CHECK(strstr(last, ",\"cut\":true}") != NULL);
	CHECK(last[strlen(last) - 1] == '}');
	CHECK(strstr(last, "}],\"size\":1,\"cut\":true}") != NULL);	/* the tail kept */
	log_set_format(LOG_TEXT);
	log_rec_begin(&r, "transaction");
	log_rec_str(&r, "from", big + 1000);
	for (int i = 0; i < 10; i++)
		log_rec_rcpt(&r, big + 2500, 250, "2.1.5");
	log_rec_uint(&r, "size", 1);
	log_rec_emit(&r, LOG_INFO, 1);
	CHECK(strlen(last) <= LOG_LINE_MAX);
	CHECK(strstr(last, "aa>:250/2.1.5 size=1 cut=1") != NULL);	/* whole recipients, the tail kept */

	/* levels: below the current one, nothing */
	last[0] = '\0';
	log_set_level(LOG_WARN);
	log_rec_begin(&r, "x");
	log_rec_emit(&r, LOG_INFO, 1);
	CHECK_STR(last, "");
	log_set_level(LOG_INFO);

	{
		enum log_format f;

		CHECK(log_parse_format("json", &f) == 0 && f == LOG_JSON);
		CHECK(log_parse_format("TEXT", &f) == 0 && f == LOG_TEXT);
		CHECK(log_parse_format("xml", &f) == -1);
	}
	log_set_sink(NULL, NULL);

	/* batching on stderr: info lines wait for log_flush(), a warn line goes at once */
	{
		char	 path[] = "/tmp/test_log.XXXXXX";
		int	 fd = mkstemp(path), saved = dup(STDERR_FILENO);

		CHECK(fd != -1 && saved != -1 && dup2(fd, STDERR_FILENO) != -1);
		unlink(path);
		log_set_format(LOG_TEXT);
		log_set_batch(schedule, NULL);
		log_msg(LOG_INFO, 0, "one");
		log_msg(LOG_INFO, 0, "two");
		CHECK_INT(scheduled, 1);			/* once, for the first line */
		CHECK_STR(err_text(fd), "");
		log_flush();
		CHECK(strstr(err_text(fd), "one\n") != NULL && strstr(err_text(fd), "two\n") != NULL);
		log_msg(LOG_INFO, 0, "three");
		log_msg(LOG_WARN, 0, "four");			/* flushes "three" first, then itself */
		CHECK_INT(scheduled, 2);
		CHECK(strstr(err_text(fd), "three\n") != NULL &&
		    strstr(err_text(fd), "three\n") < strstr(err_text(fd), "four\n"));
		for (int i = 0; i < 40; i++)			/* past PIPE_BUF: written as it fills */
			log_msg(LOG_INFO, 0, "%0200d", i);
		CHECK(strstr(err_text(fd), "0039\n") == NULL && strstr(err_text(fd), "0001\n") != NULL);
		log_set_batch(NULL, NULL);			/* flushes */
		CHECK(strstr(err_text(fd), "0039\n") != NULL);
		dup2(saved, STDERR_FILENO);
		close(saved);
		close(fd);
	}
	return tap_done();
}
