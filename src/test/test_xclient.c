/*
 * test_xclient.c -- XCLIENT's argument: attributes in any case, xtext
 * values, IPV6: addresses, [UNAVAILABLE]/[TEMPUNAVAIL], and each refusal.
 */
#include <string.h>

#include "tap.h"
#include "xclient.h"

static int
parse(const char *arg, struct xclient *x)
{
	const char *why = NULL;
	int rc = xclient_parse(arg, x, &why);

	if (rc == -1)
		CHECK(why != NULL && why[0] != '\0');
	return rc;
}

int
main(void)
{
	struct xclient	x;
	char		long_helo[300];

	CHECK_INT(parse("NAME=mx.example ADDR=192.0.2.1 PORT=25000 PROTO=ESMTP "
	    "HELO=h+2Bx LOGIN=bob+40example.org", &x), 0);
	CHECK_INT((int)x.given, XC_NAME | XC_ADDR | XC_PORT | XC_PROTO | XC_HELO | XC_LOGIN);
	CHECK_INT((int)x.unavailable, 0);
	CHECK_STR(x.name, "mx.example");
	CHECK_STR(x.addr, "192.0.2.1");
	CHECK_INT(x.port, 25000);
	CHECK(x.esmtp);
	CHECK_STR(x.helo, "h+x");
	CHECK_STR(x.login, "bob@example.org");

	CHECK_INT(parse("addr=ipv6:2001:DB8:0::1  destaddr=IPV6:::1 destport=0 proto=smtp", &x), 0);
	CHECK_STR(x.addr, "2001:db8::1");
	CHECK_STR(x.destaddr, "::1");
	CHECK_INT(x.destport, 0);
	CHECK(!x.esmtp);

	CHECK_INT(parse("NAME=[UNAVAILABLE] ADDR=[TEMPUNAVAIL] LOGIN=[unavailable]", &x), 0);
	CHECK_INT((int)x.unavailable, XC_NAME | XC_ADDR | XC_LOGIN);
	CHECK_INT(parse("HELO=a+20b", &x), 0);		/* a space in HELO is printable */
	CHECK_STR(x.helo, "a b");

	memset(long_helo, 'x', sizeof(long_helo));
	memcpy(long_helo, "HELO=", 5);
	long_helo[5 + 255] = '\0';
	CHECK_INT(parse(long_helo, &x), 0);
	long_helo[5 + 255] = 'x';
	long_helo[5 + 256] = '\0';
	CHECK_INT(parse(long_helo, &x), -1);

	CHECK_INT(parse(NULL, &x), -1);
	CHECK_INT(parse("", &x), -1);
	CHECK_INT(parse("   ", &x), -1);
	CHECK_INT(parse("ADDR", &x), -1);
	CHECK_INT(parse("ADDRESS=192.0.2.1", &x), -1);
	CHECK_INT(parse("ADDR=192.0.2.1 addr=192.0.2.1", &x), -1);
	CHECK_INT(parse("ADDR=2001:db8::1", &x), -1);	/* IPv6 needs IPV6: */
	CHECK_INT(parse("ADDR=IPV6:192.0.2.1", &x), -1);
	CHECK_INT(parse("ADDR=192.0.2.256", &x), -1);
	CHECK_INT(parse("PORT=65536", &x), -1);
	CHECK_INT(parse("PORT=", &x), -1);
	CHECK_INT(parse("PORT=+31", &x), 0);		/* xtext for "1" */
	CHECK_INT(x.port, 1);
	CHECK_INT(parse("PROTO=LMTP", &x), -1);
	CHECK_INT(parse("NAME=a+2", &x), -1);
	CHECK_INT(parse("NAME=a+2g", &x), -1);
	CHECK_INT(parse("NAME=a+2f", &x), -1);		/* lower-case hex is not xtext */
	CHECK_INT(parse("NAME=a+0D", &x), -1);		/* a CR once decoded */
	CHECK_INT(parse("NAME=a+20b", &x), -1);		/* a space in a host name */
	CHECK_INT(parse("NAME=a=b", &x), -1);
	CHECK_INT(parse("NAME=\x01", &x), -1);
	CHECK_INT(parse("NAME=\xc3\xa9", &x), -1);
	return tap_done();
}
