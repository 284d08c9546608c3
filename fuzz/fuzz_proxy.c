/*
 * fuzz_proxy.c -- libFuzzer target for proxy.c: proxy_parse() on arbitrary
 * octets, and the trusted network lists and XCLIENT's argument parser
 * (xclient.c) on the same octets as text.
 *
 * Input: the octets a listener received first.  Checked: a result is -1
 * (with a reason), 0 (more needed: only while under the bound) or a length
 * within the input and the bound; every shorter prefix of a header asks
 * for more; parsing exactly the header gives the same result; known
 * addresses are numeric addresses of their family.
 */
#include <sys/socket.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"
#include "xclient.h"
#include "fuzz.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxy_header	 h, h2;
	struct proxy_nets	 nets;
	struct xclient		 x;
	const char		*why;
	uint8_t			*buf, a[16];
	char			*text;
	int			 n, m;

	/* an exact-size heap copy so that ASan sees any overread */
	if ((buf = malloc(size ? size : 1)) == NULL)
		abort();
	memcpy(buf, data, size);
	n = proxy_parse(buf, size, &h, &why);
	REQUIRE(n >= -1);
	if (n == -1) {
		REQUIRE(why != NULL && why[0] != '\0');
	} else if (n == 0) {
		REQUIRE(size < PROXY_HEADER_MAX);
	} else {
		REQUIRE((size_t)n <= size && n <= PROXY_HEADER_MAX);
		REQUIRE(h.version == 1 || h.version == 2);
		REQUIRE(h.version != 1 || n <= PROXY_V1_MAX);
		m = proxy_parse(buf, (size_t)n, &h2, &why);
		REQUIRE(m == n);
		REQUIRE(memcmp(&h, &h2, sizeof(h)) == 0);
		for (size_t i = (size_t)n > 64 ? (size_t)n - 64 : 0; i < (size_t)n; i++)
			REQUIRE(proxy_parse(buf, i, &h2, &why) == 0);
		if (h.known) {
			char	again[PROXY_ADDR_MAX];

			REQUIRE(h.family == AF_INET || h.family == AF_INET6);
			REQUIRE(inet_pton(h.family, h.src_addr, a) == 1);
			/* one spelling: what inet_ntop writes */
			REQUIRE(inet_ntop(h.family, a, again, sizeof(again)) != NULL &&
			    strcmp(again, h.src_addr) == 0);
			REQUIRE(inet_pton(h.family, h.dst_addr, a) == 1);
		}
	}
	free(buf);

	/* the same octets as a network and as an address */
	if ((text = malloc(size + 1)) == NULL)
		abort();
	memcpy(text, data, size);
	text[size] = '\0';
	memset(&nets, 0, sizeof(nets));
	if (proxy_nets_add(&nets, text) == 0) {
		REQUIRE(nets.n == 1 && (nets.net[0].family == 4 || nets.net[0].family == 6));
		REQUIRE(nets.net[0].bits <= (nets.net[0].family == 4 ? 32 : 128));
		if (strchr(text, '/') == NULL)
			REQUIRE(proxy_nets_match(&nets, text));
	}
	(void)proxy_nets_add(&nets, "10.0.0.0/8");
	(void)proxy_nets_match(&nets, text);
	/* XCLIENT: what it accepts is bounded, printable, and numeric where it must be */
	if (xclient_parse(text, &x, &why) == 0) {
		REQUIRE(x.given != 0 && (x.unavailable & ~x.given) == 0);
		REQUIRE(strlen(x.name) <= XCLIENT_VALUE_MAX && strlen(x.helo) <= XCLIENT_VALUE_MAX &&
		    strlen(x.login) <= XCLIENT_VALUE_MAX);
		REQUIRE(strchr(x.name, ' ') == NULL);
		for (const char *p = x.helo; *p != '\0'; p++)
			REQUIRE(*p >= 0x20 && *p <= 0x7e);
		if ((x.given & ~x.unavailable) & XC_ADDR)
			REQUIRE(inet_pton(AF_INET, x.addr, a) == 1 || inet_pton(AF_INET6, x.addr, a) == 1);
	} else {
		REQUIRE(why != NULL && why[0] != '\0');
	}
	free(text);
	return 0;
}
