/*
 * fuzz.h -- what every libFuzzer target here shares: the entry point's
 * declaration and REQUIRE, an invariant that aborts (a crash libFuzzer
 * keeps) with the line that failed.
 */
#ifndef LUASMTPD_FUZZ_H
#define LUASMTPD_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define REQUIRE(cond) do {						\
	if (!(cond)) {							\
		fprintf(stderr, "%s:%d: invariant failed: %s\n",	\
		    __FILE__, __LINE__, #cond);				\
		abort();						\
	}								\
} while (0)

int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
