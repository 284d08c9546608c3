/*
 * lua_core.c -- the smtp_core Lua module: registration and small services.
 *
 * Registers the module (luaopen_smtp_core) over the other lua_*.c files:
 * the bridge (lua_bridge.c), the session handles and the harness transport
 * (lua_session.c), handler coroutines (lua_run.c).  Owns what remains: the
 * conversion of server options into a session_config and the engine's
 * defaults, logging and log capture, the machine's name, fsync and mkdir.
 * Knows nothing of sockets or libevent: timers belong to the caller.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>

#include "log.h"
#include "lua_core.h"
#include "lua_core_impl.h"
#include "proxy.h"
#include "session.h"

#define CAPTURE_MAX	10000		/* harness: captured log lines held */

/* Captured log lines (the harness); process-wide like the log sink itself. */
static char	**capture_lines;
static size_t	  capture_len;
static int	  capture_on;

/* ---- config ------------------------------------------------------------- */

static lua_Integer
opt_int(lua_State *L, int idx, const char *key, lua_Integer def, lua_Integer min)
{
	lua_Integer v = def;
	int isint;

	if (lua_getfield(L, idx, key) != LUA_TNIL) {
		v = lua_tointegerx(L, -1, &isint);
		if (!isint || v < min)
			luaL_error(L, "config field %s: integer >= %d expected", key, (int)min);
	}
	lua_pop(L, 1);
	return v;
}

void
lcore_config(lua_State *L, int idx, struct session_config *cfg, char *host,
    size_t hostlen)
{
	idx = lua_absindex(L, idx);
	if (lua_getfield(L, idx, "hostname") == LUA_TSTRING) {
		snprintf(host, hostlen, "%s", lua_tostring(L, -1));
		cfg->hostname = host;
	}
	lua_pop(L, 1);
	cfg->extensions = (unsigned)opt_int(L, idx, "extensions", cfg->extensions, 0) & EXT_ALL;
	cfg->max_line = (size_t)opt_int(L, idx, "max_line", (lua_Integer)cfg->max_line, 0);
	cfg->max_text_line = (size_t)opt_int(L, idx, "max_text_line", (lua_Integer)cfg->max_text_line, 0);
	cfg->max_recipients = (size_t)opt_int(L, idx, "max_recipients", (lua_Integer)cfg->max_recipients, 1);
	cfg->max_size = (uint64_t)opt_int(L, idx, "max_size", (lua_Integer)cfg->max_size, 0);
	cfg->max_bad_commands = (unsigned)opt_int(L, idx, "max_bad_commands", cfg->max_bad_commands, 1);
	cfg->timeout_command_ms = (unsigned)opt_int(L, idx, "timeout_command_ms", cfg->timeout_command_ms, 1);
	cfg->timeout_data_ms = (unsigned)opt_int(L, idx, "timeout_data_ms", cfg->timeout_data_ms, 1);
	cfg->timeout_decision_ms = (unsigned)opt_int(L, idx, "timeout_decision_ms", cfg->timeout_decision_ms, 1);
	cfg->timeout_tls_ms = (unsigned)opt_int(L, idx, "timeout_tls_ms", cfg->timeout_tls_ms, 1);
	cfg->min_data_rate = (unsigned)opt_int(L, idx, "min_data_rate", cfg->min_data_rate, 0);
	cfg->max_session_ms = (unsigned)opt_int(L, idx, "max_session_ms", cfg->max_session_ms, 0);
	cfg->auth_methods = (unsigned)opt_int(L, idx, "auth_methods", cfg->auth_methods, 0) &
	    (AUTH_PLAIN | AUTH_LOGIN);
	if (lua_getfield(L, idx, "auth_without_tls") != LUA_TNIL)
		cfg->auth_without_tls = lua_toboolean(L, -1);
	lua_pop(L, 1);
	if (lua_getfield(L, idx, "starttls") != LUA_TNIL)
		cfg->starttls = lua_toboolean(L, -1);
	lua_pop(L, 1);
	cfg->max_auth_failures = (unsigned)opt_int(L, idx, "max_auth_failures",
	    cfg->max_auth_failures, 1);
	if (lua_getfield(L, idx, "accept_bare_lf") != LUA_TNIL)
		cfg->accept_bare_lf = lua_toboolean(L, -1);
	lua_pop(L, 1);
	if (lua_getfield(L, idx, "lmtp") != LUA_TNIL)
		cfg->lmtp = lua_toboolean(L, -1);
	lua_pop(L, 1);
	if (lua_getfield(L, idx, "received_header") != LUA_TNIL)
		cfg->received_header = lua_toboolean(L, -1);
	lua_pop(L, 1);
	cfg->max_hops = (unsigned)opt_int(L, idx, "max_hops", cfg->max_hops, 0);
	if (lua_getfield(L, idx, "xclient_from") == LUA_TTABLE) {
		memset(&cfg->xclient_from, 0, sizeof(cfg->xclient_from));
		for (lua_Integer i = 1; lua_rawgeti(L, -1, i) == LUA_TSTRING; i++) {
			(void)proxy_nets_add(&cfg->xclient_from, lua_tostring(L, -1));
			lua_pop(L, 1);	/* server.xclientFrom checked each one */
		}
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
	if (lua_getfield(L, idx, "no_summary") != LUA_TNIL)
		cfg->no_summary = lua_toboolean(L, -1);
	lua_pop(L, 1);
}

/* smtp_core.defaults() -> the engine's config defaults, snake_case */
static int
lcore_defaults(lua_State *L)
{
	struct session_config cfg;

	session_config_init(&cfg);
	lua_createtable(L, 0, 10);
	lua_pushinteger(L, cfg.extensions);
	lua_setfield(L, -2, "extensions");
#define F(name) lua_pushinteger(L, (lua_Integer)cfg.name); lua_setfield(L, -2, #name)
	F(max_line); F(max_text_line); F(max_recipients); F(max_size);
	F(max_bad_commands); F(timeout_command_ms); F(timeout_data_ms);
	F(timeout_decision_ms); F(timeout_tls_ms); F(min_data_rate); F(max_session_ms);
	F(max_hops);
#undef F
	lua_pushboolean(L, cfg.received_header);
	lua_setfield(L, -2, "received_header");
	return 1;
}

/* smtp_core.network_ok(s) -> true if s is a network proxy.h takes ("10.0.0.0/8") */
static int
lcore_network_ok(lua_State *L)
{
	struct proxy_nets	nets = { 0 };

	lua_pushboolean(L, proxy_nets_add(&nets, luaL_checkstring(L, 1)) == 0);
	return 1;
}

/* ---- logging ------------------------------------------------------------ */

static void
capture_sink(void *arg, enum log_level level, const char *line)
{
	char *copy;

	(void)arg;
	(void)level;
	if (capture_len >= CAPTURE_MAX)
		return;
	if (capture_lines == NULL &&
	    (capture_lines = calloc(CAPTURE_MAX, sizeof(*capture_lines))) == NULL)
		return;
	if ((copy = strdup(line)) != NULL)
		capture_lines[capture_len++] = copy;
}

static int
check_level(lua_State *L, int idx)
{
	enum log_level level;

	if (log_parse_level(luaL_checkstring(L, idx), &level) == -1)
		return luaL_argerror(L, idx, "error, warn, info or debug expected");
	return (int)level;
}

/* smtp_core.log(level, id_hex|nil, text) */
static int
lcore_log(lua_State *L)
{
	int		 level = check_level(L, 1);
	const char	*hex = luaL_optstring(L, 2, NULL);
	const char	*text = luaL_checkstring(L, 3);
	uint64_t	 id = hex ? strtoull(hex, NULL, 16) : 0;

	log_msg((enum log_level)level, id, "%s", text);
	return 0;
}

/* smtp_core.log_level([name]) -> the current level's name */
static int
lcore_log_level(lua_State *L)
{
	static const char *const names[] = { "error", "warn", "info", "debug" };

	if (!lua_isnoneornil(L, 1))
		log_set_level((enum log_level)check_level(L, 1));
	lua_pushstring(L, names[log_get_level()]);
	return 1;
}

/* smtp_core.log_capture(on): route log lines into memory (the harness) */
static int
lcore_log_capture(lua_State *L)
{
	capture_on = lua_toboolean(L, 1);
	log_set_sink(capture_on ? capture_sink : NULL, NULL);
	return 0;
}

/* smtp_core.log_take() -> the captured lines since the last call */
static int
lcore_log_take(lua_State *L)
{
	lua_createtable(L, (int)capture_len, 0);
	for (size_t i = 0; i < capture_len; i++) {
		lua_pushstring(L, capture_lines[i]);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
		free(capture_lines[i]);
		capture_lines[i] = NULL;
	}
	capture_len = 0;
	return 1;
}

/* smtp_core.fqdn() -> the machine's fully qualified name (or its hostname) */
static int
lcore_fqdn(lua_State *L)
{
	char		 name[256];
	struct addrinfo	 hints, *res = NULL;

	if (gethostname(name, sizeof(name)) == -1)
		snprintf(name, sizeof(name), "localhost");
	name[sizeof(name) - 1] = '\0';
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_flags = AI_CANONNAME;
	if (getaddrinfo(name, NULL, &hints, &res) == 0 && res != NULL &&
	    res->ai_canonname != NULL && strchr(res->ai_canonname, '.') != NULL)
		snprintf(name, sizeof(name), "%s", res->ai_canonname);
	if (res != NULL)
		freeaddrinfo(res);
	lua_pushstring(L, name);
	return 1;
}

/* ---- files: what durable delivery needs and Lua lacks ------------------- */

static int
push_errno(lua_State *L, const char *what, const char *path)
{
	int e = errno;

	luaL_pushfail(L);
	lua_pushfstring(L, "%s %s: %s", what, path, strerror(e));
	return 2;
}

/* smtp_core.fsync(path) -> true | nil, message: a file's or directory's data to disk */
static int
lcore_fsync(lua_State *L)
{
	const char	*path = luaL_checkstring(L, 1);
	int		 fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return push_errno(L, "open", path);
	if (fsync(fd) == -1) {
		int e = errno;

		close(fd);
		errno = e;
		return push_errno(L, "fsync", path);
	}
	close(fd);
	lua_pushboolean(L, 1);
	return 1;
}

/* smtp_core.mkdir(path[, mode]) -> true | nil, message (an existing directory is fine) */
static int
lcore_mkdir(lua_State *L)
{
	const char	*path = luaL_checkstring(L, 1);
	lua_Integer	 mode = luaL_optinteger(L, 2, 0700);
	struct stat	 st;

	if (mkdir(path, (mode_t)mode) == -1) {
		if (errno != EEXIST)
			return push_errno(L, "mkdir", path);
		if (stat(path, &st) == -1 || !S_ISDIR(st.st_mode)) {
			errno = ENOTDIR;
			return push_errno(L, "mkdir", path);
		}
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* ---- registration -------------------------------------------------------- */

static const luaL_Reg core_funcs[] = {
	{ "bridge",	 lcore_bridge },
	{ "session",	 lcore_session },
	{ "defaults",	 lcore_defaults },
	{ "network_ok",	 lcore_network_ok },
	{ "log",	 lcore_log },
	{ "log_level",	 lcore_log_level },
	{ "log_capture", lcore_log_capture },
	{ "log_take",	 lcore_log_take },
	{ "fqdn",	 lcore_fqdn },
	{ "fsync",	 lcore_fsync },
	{ "mkdir",	 lcore_mkdir },
	{ "call",	 lcore_call },
	{ "thread",	 lcore_thread },
	{ "limits",	 lcore_limits },
	{ "resume",	 lcore_coresume },
	{ "wrap",	 lcore_cowrap },
	{ NULL, NULL }
};

static void
create_meta(lua_State *L, const char *name, const luaL_Reg *methods,
    lua_CFunction gc, lua_CFunction tostring)
{
	luaL_newmetatable(L, name);
	lua_newtable(L);
	luaL_setfuncs(L, methods, 0);
	lua_setfield(L, -2, "__index");
	if (gc != NULL) {
		lua_pushcfunction(L, gc);
		lua_setfield(L, -2, "__gc");
	}
	if (tostring != NULL) {
		lua_pushcfunction(L, tostring);
		lua_setfield(L, -2, "__tostring");
	}
	lua_pop(L, 1);
}

int
luaopen_smtp_core(lua_State *L)
{
	create_meta(L, LCORE_BRIDGE_MT, lcore_bridge_methods, NULL, NULL);
	create_meta(L, LCORE_SESSION_MT, lcore_session_methods, lcore_session_gc,
	    lcore_session_tostring);
	luaL_newlib(L, core_funcs);
	lua_createtable(L, 0, SEV_COUNT);
	for (int i = 0; i < SEV_COUNT; i++) {
		lua_pushinteger(L, EVBIT(i));
		lua_setfield(L, -2, session_event_name((enum session_event)i));
	}
	lua_setfield(L, -2, "EVENTS");
	lua_createtable(L, 0, 5);
#define X(n) lua_pushinteger(L, EXT_##n); lua_setfield(L, -2, #n)
	X(PIPELINING); X(SIZE); X(8BITMIME); X(ENHANCEDSTATUSCODES); X(SMTPUTF8);
	X(CHUNKING); X(BINARYMIME); X(DSN);
#undef X
	lua_setfield(L, -2, "EXT");
	lua_createtable(L, 0, 2);
	lua_pushinteger(L, AUTH_PLAIN);
	lua_setfield(L, -2, "PLAIN");
	lua_pushinteger(L, AUTH_LOGIN);
	lua_setfield(L, -2, "LOGIN");
	lua_setfield(L, -2, "AUTH");
	lua_pushstring(L, SESSION_POLICY_ERROR);
	lua_setfield(L, -2, "POLICY_ERROR");
	/* defaults the library uses, defined here once */
	lua_pushliteral(L, LCORE_TLS_NEEDS_CERT);
	lua_setfield(L, -2, "TLS_NEEDS_CERT");
	lua_pushinteger(L, HANDLER_BUDGET);
	lua_setfield(L, -2, "HANDLER_BUDGET");
	lua_pushnumber(L, CPU_DEFAULT_MS / 1000.0);
	lua_setfield(L, -2, "HANDLER_CPU");
	lua_createtable(L, 0, SEV_COUNT);
	for (int i = 0; i < SEV_COUNT; i++) {
		lua_pushboolean(L, lcore_default_accept(i));
		lua_setfield(L, -2, session_event_name((enum session_event)i));
	}
	lua_setfield(L, -2, "ACCEPT");
	return 1;
}
