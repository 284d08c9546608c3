/*
 * test_sasl.c -- base64 both ways and the PLAIN message layout.
 */
#include <string.h>

#include "sasl.h"
#include "tap.h"

static void
test_base64(void)
{
	static const char *const plain[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
	static const char *const coded[] = { "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy" };
	char	buf[64];
	long	n;

	for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
		CHECK(sasl_base64_encode(plain[i], strlen(plain[i]), buf, sizeof(buf)) == strlen(coded[i]));
		CHECK_STR(buf, coded[i]);
		n = sasl_base64_decode(coded[i], strlen(coded[i]), buf, sizeof(buf));
		CHECK(n == (long)strlen(plain[i]) && memcmp(buf, plain[i], (size_t)n) == 0);
	}
	CHECK(sasl_base64_decode("Zm9", 3, buf, sizeof(buf)) == -1);	/* not a multiple of 4 */
	CHECK(sasl_base64_decode("Zm=v", 4, buf, sizeof(buf)) == -1);	/* padding inside */
	CHECK(sasl_base64_decode("Zg==Zg==", 8, buf, sizeof(buf)) == -1);	/* padding before the end */
	CHECK(sasl_base64_decode("Z!9v", 4, buf, sizeof(buf)) == -1);
	CHECK(sasl_base64_decode("Zm9vYmFy", 8, buf, 5) == -1);	/* does not fit */
	CHECK(sasl_base64_encode("foobar", 6, buf, 8) == 0);
}

static void
test_plain_split(void)
{
	const char	*authzid, *authcid, *passwd;
	char		 msg[64];

	memcpy(msg, "admin\0bob\0secret", 16);
	CHECK(sasl_plain_split(msg, 16, &authzid, &authcid, &passwd) == 0);
	CHECK_STR(authzid, "admin");
	CHECK_STR(authcid, "bob");
	CHECK_STR(passwd, "secret");
	memcpy(msg, "\0bob\0", 5);
	CHECK(sasl_plain_split(msg, 5, &authzid, &authcid, &passwd) == 0);
	CHECK_STR(passwd, "");
	memcpy(msg, "\0\0secret", 8);
	CHECK(sasl_plain_split(msg, 8, &authzid, &authcid, &passwd) == -1);	/* no authcid */
	memcpy(msg, "bob\0secret", 10);
	CHECK(sasl_plain_split(msg, 10, &authzid, &authcid, &passwd) == -1);	/* one NUL */
	memcpy(msg, "\0bob\0sec\0ret", 12);
	CHECK(sasl_plain_split(msg, 12, &authzid, &authcid, &passwd) == -1);	/* three */
}

int
main(void)
{
	test_base64();
	test_plain_split();
	return tap_done();
}
