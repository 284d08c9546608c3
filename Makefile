# Makefile -- the two set-up commands of the README, and a few conveniences.
#
#   make run    install what is missing, build into build/, serve
#               scripts/console.lua on 127.0.0.1:2525
#   make test   install what the tests need, build, run every suite
#               (C tests under ASan+UBSan, busted unit/engine/e2e, fuzz)
#   make install  build, then meson install: the binary, the Lua library
#               and smtp_core.so under /usr/local (as root; DESTDIR= works)
# Package installation lives in .ci/install-deps, the suites in .ci/test.

LISTEN	?= 127.0.0.1:2525
SCRIPT	?= scripts/console.lua

.PHONY: all deps deps-test build run test check install clean

all: build

deps:
	.ci/install-deps run

deps-test:
	.ci/install-deps test

build: deps
	@if [ -f build/meson-private/coredata.dat ]; then :; else meson setup build; fi
	ninja -C build

run: build
	./build/luasmtpd --listen $(LISTEN) $(SCRIPT)

test: deps-test
	.ci/test

# bin/luasmtpd, share/lua/5.4/smtp/*.lua, lib/lua/5.4/smtp_core.so under the
# prefix: where lua5.4 and busted look, so smtp.testing works anywhere
install: build
	meson install -C build --no-rebuild

# Validate a policy script without serving it: make check SCRIPT=my.lua
check: build
	./build/luasmtpd --check $(SCRIPT)

clean:
	rm -rf build build-asan build-fuzz build-logs
