/*
 * lua_session.c -- the session handles Lua holds, and the harness transport.
 *
 * A handle is weak: it outlives its session, then decide is a no-op and the
 * other methods raise.  Its methods call into the engine on the calling
 * Lua thread (the bridge, lua_bridge.c, runs the hooks there).  The harness
 * transport makes sessions whose io is an in-memory buffer (smtp_core.session,
 * for busted): the spec feeds bytes, reads replies and plays timers and TLS.
 * Knows nothing of sockets or libevent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "lua_core.h"
#include "lua_core_impl.h"
#include "session.h"

#define OUT_MAX		(16u << 20)	/* harness: reply bytes held for Lua */

/* ---- handles ----------------------------------------------------------- */

static struct lsession *
check_handle(lua_State *L, int idx)
{
	return luaL_checkudata(L, idx, LCORE_SESSION_MT);
}

static struct session *
check_session(lua_State *L, int idx)
{
	struct lsession *ls = check_handle(L, idx);

	if (ls->s == NULL)
		luaL_error(L, "attempt to use a closed session");
	return ls->s;
}

/* Every call from Lua into the engine runs hooks on the calling thread. */
#define ENTER(b, L)	lua_State *saved_L_ = (b)->L; (b)->L = (L)
#define LEAVE(b)	((b)->L = saved_L_)

/* ---- the harness transport ------------------------------------------------ */

static void
hio_write(void *io, const char *buf, size_t len)
{
	struct lsession *ls = io;

	if (ls->outlen + len > OUT_MAX)
		return;
	if (ls->outlen + len > ls->outcap) {
		size_t	 cap = ls->outcap ? ls->outcap : 1024;
		char	*p;

		while (cap < ls->outlen + len)
			cap *= 2;
		if ((p = realloc(ls->out, cap)) == NULL)
			return;
		ls->out = p;
		ls->outcap = cap;
	}
	memcpy(ls->out + ls->outlen, buf, len);
	ls->outlen += len;
}

static void
hio_close(void *io)
{
	((struct lsession *)io)->io_closed = 1;
}

static void
hio_wake(void *io)
{
	((struct lsession *)io)->woken = 1;
}

static void
hio_timer(void *io, unsigned ms)
{
	struct lsession *ls = io;

	ls->timer_ms = ms;
	ls->timer_seq++;
}

static void
hio_starttls(void *io)
{
	((struct lsession *)io)->tls_wait = 1;
}

/* The engine's deadlines run on the harness's virtual clock. */
static uint64_t
hio_now(void *io)
{
	struct lsession *ls = io;

	return ls->b != NULL ? ls->b->now_ms : 0;
}

static const struct session_io harness_io = {
	.write = hio_write,
	.close = hio_close,
	.wake = hio_wake,
	.timer = hio_timer,
	.starttls = hio_starttls,
	.now = hio_now,
};

/* bridge:clock(seconds): the harness's virtual time, for its sessions' deadlines */
int
lcore_bridge_clock(lua_State *L)
{
	struct lbridge	*b = lcore_check_bridge(L, 1);
	lua_Number	 t = luaL_checknumber(L, 2);

	luaL_argcheck(L, t >= 0 && t < 1e12, 2, "seconds >= 0 expected");
	b->now_ms = (uint64_t)(t * 1000 + 0.5);
	return 0;
}

/* Reads {version=, cipher=, peerSubject=} at idx (absent fields: defaults). */
static void
read_tls(lua_State *L, int idx, struct session_tls *tls)
{
	memset(tls, 0, sizeof(*tls));
	snprintf(tls->version, sizeof(tls->version), "TLSv1.3");
	snprintf(tls->cipher, sizeof(tls->cipher), "TLS_AES_128_GCM_SHA256");
	if (!lua_istable(L, idx))
		return;
	idx = lua_absindex(L, idx);
	if (lua_getfield(L, idx, "version") == LUA_TSTRING)
		snprintf(tls->version, sizeof(tls->version), "%s", lua_tostring(L, -1));
	if (lua_getfield(L, idx, "cipher") == LUA_TSTRING)
		snprintf(tls->cipher, sizeof(tls->cipher), "%s", lua_tostring(L, -1));
	if (lua_getfield(L, idx, "peerSubject") == LUA_TSTRING)
		snprintf(tls->peer_subject, sizeof(tls->peer_subject), "%s",
		    lua_tostring(L, -1));
	lua_pop(L, 3);
}

static void
copy_addr(lua_State *L, int idx, const char *key, char *dst, size_t len)
{
	if (lua_getfield(L, idx, key) == LUA_TSTRING)
		snprintf(dst, len, "%s", lua_tostring(L, -1));
	lua_pop(L, 1);
}

/* A port field, or def when absent (0 counts as absent). */
static uint16_t
get_port(lua_State *L, int idx, const char *key, uint16_t def)
{
	lua_Integer p = 0;

	if (lua_getfield(L, idx, key) != LUA_TNIL)
		p = luaL_checkinteger(L, -1);
	lua_pop(L, 1);
	luaL_argcheck(L, p >= 0 && p <= 65535, 3, "port out of range");
	return p == 0 ? def : (uint16_t)p;
}

/*
 * smtp_core.session(bridge, config, peer) -> handle
 * A session whose transport is memory: the harness feeds it and reads its
 * replies.  The CONNECT ask runs before this returns.
 */
int
lcore_session(lua_State *L)
{
	struct lbridge	*b = lcore_check_bridge(L, 1);
	struct lsession	*ls;
	struct session	*s;

	luaL_checktype(L, 2, LUA_TTABLE);
	luaL_checktype(L, 3, LUA_TTABLE);
	ls = lcore_new_handle(b, L, 1);
	ls->owned = 1;
	session_config_init(&ls->cfg);
	lcore_config(L, 2, &ls->cfg, ls->hostname, sizeof(ls->hostname));
	snprintf(ls->peer.remote_addr, sizeof(ls->peer.remote_addr), "192.0.2.1");
	snprintf(ls->peer.local_addr, sizeof(ls->peer.local_addr), "127.0.0.1");
	ls->peer.remote_port = 49152;
	ls->peer.local_port = 25;
	copy_addr(L, 3, "remoteAddress", ls->peer.remote_addr, sizeof(ls->peer.remote_addr));
	copy_addr(L, 3, "localAddress", ls->peer.local_addr, sizeof(ls->peer.local_addr));
	ls->peer.remote_port = get_port(L, 3, "remotePort", ls->peer.remote_port);
	ls->peer.local_port = get_port(L, 3, "localPort", ls->peer.local_port);
	if (lua_getfield(L, 3, "tls") != LUA_TNIL && lua_toboolean(L, -1)) {
		read_tls(L, -1, &ls->tls);	/* implicit TLS: secure from the start */
		ls->peer.tls = &ls->tls;
	}
	lua_pop(L, 1);
	/* the CONNECT hook binds the handle it finds here to the new session */
	b->creating = ls;
	lua_rawgeti(L, LUA_REGISTRYINDEX, b->map_ref);
	lua_pushvalue(L, -2);
	lua_setfield(L, -2, "creating");
	lua_pop(L, 1);
	{
		ENTER(b, L);
		s = session_create(&ls->cfg, &lcore_hooks, b, &harness_io, ls, &ls->peer);
		LEAVE(b);
	}
	b->creating = NULL;
	lua_rawgeti(L, LUA_REGISTRYINDEX, b->map_ref);
	lua_pushnil(L);
	lua_setfield(L, -2, "creating");
	lua_pop(L, 1);
	if (s == NULL)
		return luaL_error(L, "out of memory");
	return 1;
}

/* ---- handle methods ------------------------------------------------------- */

/* handle:decide(accept, code, text) -> true | nil, reason (a no-op once closed) */
static int
lsession_decide(lua_State *L)
{
	struct lsession	*ls = check_handle(L, 1);
	struct verdict	 v;
	int		 rc;

	if (ls->s == NULL) {
		luaL_pushfail(L);
		lua_pushliteral(L, "session closed");
		return 2;
	}
	v.accept = lua_toboolean(L, 2);
	v.code = (int)luaL_optinteger(L, 3, 0);
	v.text = luaL_optstring(L, 4, NULL);
	{
		ENTER(ls->b, L);
		rc = session_decide(ls->s, &v);
		LEAVE(ls->b);
	}
	if (rc == -1) {
		luaL_pushfail(L);
		lua_pushliteral(L, "no outstanding question");
		return 2;
	}
	lua_pushboolean(L, 1);
	return 1;
}

/*
 * handle:recipientVerdict(i, accept, code, text) -> true | nil, reason: LMTP's
 * reply for recipient i (1-based, RCPT order) of the message being decided
 */
static int
lsession_recipient_verdict(lua_State *L)
{
	struct lsession	*ls = check_handle(L, 1);
	lua_Integer	 i = luaL_checkinteger(L, 2);
	struct verdict	 v;

	if (ls->s == NULL) {
		luaL_pushfail(L);
		lua_pushliteral(L, "session closed");
		return 2;
	}
	v.accept = lua_toboolean(L, 3);
	v.code = (int)luaL_optinteger(L, 4, 0);
	v.text = luaL_optstring(L, 5, NULL);
	if (i < 1 || session_recipient_verdict(ls->s, (size_t)(i - 1), &v) == -1) {
		luaL_pushfail(L);
		lua_pushliteral(L, "no LMTP message is being decided");
		return 2;
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* handle:feed(bytes) -> octets consumed */
static int
lsession_feed(lua_State *L)
{
	struct lsession	*ls = check_handle(L, 1);
	size_t		 len, n;
	const char	*buf = luaL_checklstring(L, 2, &len);

	check_session(L, 1);
	{
		ENTER(ls->b, L);
		n = session_feed(ls->s, buf, len);
		LEAVE(ls->b);
	}
	lua_pushinteger(L, (lua_Integer)n);
	return 1;
}

#define SIMPLE_CALL(name, fn)						\
static int								\
name(lua_State *L)							\
{									\
	struct lsession *ls = check_handle(L, 1);			\
									\
	check_session(L, 1);						\
	{								\
		ENTER(ls->b, L);					\
		fn(ls->s);						\
		LEAVE(ls->b);						\
	}								\
	return 0;							\
}

SIMPLE_CALL(lsession_eof, session_eof)
SIMPLE_CALL(lsession_timeout, session_timeout)
SIMPLE_CALL(lsession_shutdown, session_shutdown)

/* pause/resume: no-ops once closed (a late call from a timer is harmless) */
static int
lsession_pause(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	if (ls->s != NULL) {
		ENTER(ls->b, L);
		session_pause(ls->s);
		LEAVE(ls->b);
	}
	return 0;
}

/* handle:sink(obj | nil): message data to a C consumer (struct lcore_sink) */
static int
lsession_sink(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	if (lua_isnoneornil(L, 2)) {
		ls->sink = NULL;
		lua_pushnil(L);
		lua_setiuservalue(L, 1, UV_SINK);
		return 0;
	}
	luaL_checktype(L, 2, LUA_TUSERDATA);
	if (luaL_getmetafield(L, 2, "__lcore_sink") != LUA_TBOOLEAN || !lua_toboolean(L, -1))
		return luaL_argerror(L, 2, "not a data sink");
	lua_pop(L, 1);
	lua_pushvalue(L, 2);
	lua_setiuservalue(L, 1, UV_SINK);
	ls->sink = lua_touserdata(L, 2);
	return 0;
}

/*
 * handle:dataListeners(on) -> octets: whether the current message's chunks
 * go to Lua (a 'data' listener, a next hop fed from Lua); off, the bridge
 * makes no Lua string and runs no dispatch per chunk.  Returns the octets
 * that passed by unseen since the last call, for message.size.
 */
static int
lsession_data_listeners(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	ls->data_quiet = !lua_toboolean(L, 2);
	lua_pushinteger(L, (lua_Integer)ls->data_skipped);
	ls->data_skipped = 0;
	return 1;
}

static int
lsession_resume(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	if (ls->s != NULL) {
		ENTER(ls->b, L);
		session_resume(ls->s);
		LEAVE(ls->b);
	}
	return 0;
}

/*
 * handle:addHeader(name, value) -> true | fail, why, bad: a header field
 * prepended to the message's data (session_add_header); bad is true for a
 * misuse (a bad name or value, too late), false for the size limit.
 */
static int
lsession_add_header(lua_State *L)
{
	struct session	*s = check_session(L, 1);
	size_t		 nlen, vlen;
	const char	*name = luaL_checklstring(L, 2, &nlen);
	const char	*value = luaL_checklstring(L, 3, &vlen);
	const char	*why = NULL;
	int		 rc;

	if ((rc = session_add_header(s, name, nlen, value, vlen, &why)) == 0) {
		lua_pushboolean(L, 1);
		return 1;
	}
	luaL_pushfail(L);
	lua_pushstring(L, why);
	lua_pushboolean(L, rc == -1);
	return 3;
}

/* handle:setReverseName(name | nil) -> true | fail: the client's name in the Received field */
static int
lsession_set_reverse_name(lua_State *L)
{
	struct session	*s = check_session(L, 1);
	const char	*name = luaL_optstring(L, 2, NULL);

	if (session_set_reverse_name(s, name) == -1) {
		luaL_pushfail(L);
		return 1;
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* handle:destroy(): harness only; runs the closed hook */
static int
lsession_destroy(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);
	struct session	*s = ls->s;

	luaL_argcheck(L, ls->owned, 1, "not a harness session");
	if (s != NULL) {
		ENTER(ls->b, L);
		session_destroy(s);	/* hook_closed clears ls->s */
		LEAVE(ls->b);
		ls->s = NULL;
	}
	return 0;
}

/* handle:output() -> the reply bytes written since the last call */
static int
lsession_output(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	lua_pushlstring(L, ls->out ? ls->out : "", ls->outlen);
	ls->outlen = 0;
	return 1;
}

/* handle:io() -> closed, woken (cleared), timer_seq, timer_ms */
static int
lsession_io(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	lua_pushboolean(L, ls->io_closed);
	lua_pushboolean(L, ls->woken);
	ls->woken = 0;
	lua_pushinteger(L, ls->timer_seq);
	lua_pushinteger(L, ls->timer_ms);
	return 4;
}

/* handle:starttls_pending() -> true once STARTTLS said 220 (cleared by tls_started) */
static int
lsession_starttls_pending(lua_State *L)
{
	lua_pushboolean(L, check_handle(L, 1)->tls_wait);
	return 1;
}

/* handle:tls_started([{version=, cipher=, peerSubject=}]): the harness's handshake */
static int
lsession_tls_started(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	luaL_argcheck(L, ls->owned, 1, "not a harness session");
	check_session(L, 1);
	luaL_argcheck(L, ls->tls_wait, 1, "no STARTTLS is waiting for a handshake");
	read_tls(L, 2, &ls->tls);
	ls->tls_wait = 0;
	{
		ENTER(ls->b, L);
		session_tls_started(ls->s, &ls->tls);
		LEAVE(ls->b);
	}
	return 0;
}

/* handle:tls() -> {version=, cipher=, peerSubject=} | nil (plaintext or closed) */
static int
lsession_tls(lua_State *L)
{
	struct lsession			*ls = check_handle(L, 1);
	const struct session_tls	*t = ls->s ? session_tls(ls->s) : NULL;

	if (t == NULL) {
		lua_pushnil(L);
		return 1;
	}
	lua_createtable(L, 0, 3);
	lua_pushstring(L, t->version);
	lua_setfield(L, -2, "version");
	lua_pushstring(L, t->cipher);
	lua_setfield(L, -2, "cipher");
	if (t->peer_subject[0] != '\0') {
		lua_pushstring(L, t->peer_subject);
		lua_setfield(L, -2, "peerSubject");
	}
	return 1;
}

/* handle:user() -> the authenticated user | nil (none, or closed) */
static int
lsession_user(lua_State *L)
{
	struct lsession	*ls = check_handle(L, 1);
	const char	*u = ls->s ? session_user(ls->s) : NULL;

	if (u == NULL)
		lua_pushnil(L);
	else
		lua_pushstring(L, u);
	return 1;
}

/*
 * handle:attach(mask[, conn]): Lua has a connection object; mask = events it
 * listens to; conn, the object the asks of kinds.asks get first.
 */
static int
lsession_attach(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	ls->attached = 1;
	ls->mask = (unsigned)luaL_checkinteger(L, 2);
	if (!lua_isnoneornil(L, 3)) {
		luaL_checktype(L, 3, LUA_TTABLE);
		lua_settop(L, 3);
		lua_setiuservalue(L, 1, UV_CONN);
	}
	return 0;
}

static int
lsession_id(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	char buf[17];

	snprintf(buf, sizeof(buf), "%016llx", (unsigned long long)ls->id);
	lua_pushstring(L, buf);
	return 1;
}

static int
lsession_state(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	if (ls->s == NULL)
		lua_pushliteral(L, "closed");
	else
		lua_pushstring(L, session_state_name(ls->s));
	return 1;
}

static int
lsession_closed(lua_State *L)
{
	lua_pushboolean(L, check_handle(L, 1)->s == NULL);
	return 1;
}

static int
lsession_idle(lua_State *L)
{
	lua_pushboolean(L, session_idle(check_session(L, 1)));
	return 1;
}

/*
 * The envelope, as the engine keeps it (nil / {} once closed):
 * handle:helo() -> {name =, extended =} | nil, handle:sender() -> address
 * object | nil, handle:recipients() -> a new array of address objects.
 */
static int
lsession_helo(lua_State *L)
{
	struct lsession	*ls = check_handle(L, 1);
	const char	*name;
	bool		 ext;

	if (ls->s == NULL || (name = session_helo(ls->s, &ext)) == NULL)
		return 0;
	lua_createtable(L, 0, 2);
	lua_pushstring(L, name);
	lua_setfield(L, -2, "name");
	lua_pushboolean(L, ext);
	lua_setfield(L, -2, "extended");
	return 1;
}

static int
lsession_sender(lua_State *L)
{
	struct lsession		*ls = check_handle(L, 1);
	const struct smtp_path	*p;
	unsigned		 serial;

	if (ls->s == NULL || (p = session_sender(ls->s, &serial)) == NULL)
		return 0;
	lcore_push_path(L, 1, p, serial, 0);
	return 1;
}

static int
lsession_recipients(lua_State *L)
{
	struct lsession		*ls = check_handle(L, 1);
	size_t			 n = ls->s != NULL ? session_recipient_count(ls->s) : 0;

	lua_createtable(L, (int)n, 0);
	for (size_t i = 0; i < n; i++) {
		unsigned		 serial;
		const struct smtp_path	*p = session_recipient(ls->s, i, &serial);

		lcore_push_path(L, 1, p, serial, 1);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	return 1;
}

/* handle:peer() -> {remoteAddress=, remotePort=, localAddress=, localPort=[, remoteName=]} */
static int
lsession_peer(lua_State *L)
{
	const struct session_peer *p = session_peer(check_session(L, 1));

	lua_createtable(L, 0, 5);
	lua_pushboolean(L, session_lmtp(check_session(L, 1)));
	lua_setfield(L, -2, "lmtp");
	lua_pushstring(L, p->remote_addr);
	lua_setfield(L, -2, "remoteAddress");
	lua_pushinteger(L, p->remote_port);
	lua_setfield(L, -2, "remotePort");
	lua_pushstring(L, p->local_addr);
	lua_setfield(L, -2, "localAddress");
	lua_pushinteger(L, p->local_port);
	lua_setfield(L, -2, "localPort");
	if (session_remote_name(check_session(L, 1)) != NULL) {	/* XCLIENT NAME */
		lua_pushstring(L, session_remote_name(check_session(L, 1)));
		lua_setfield(L, -2, "remoteName");
	}
	return 1;
}

int
lcore_session_gc(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	if (ls->owned && ls->s != NULL) {
		ls->finalizing = 1;	/* no Lua from hooks for a dying handle */
		session_destroy(ls->s);
		ls->s = NULL;
	}
	free(ls->out);
	ls->out = NULL;
	ls->outlen = ls->outcap = 0;
	return 0;
}

int
lcore_session_tostring(lua_State *L)
{
	struct lsession *ls = check_handle(L, 1);

	lua_pushfstring(L, "smtp_core.session (%s)", ls->s ? "open" : "closed");
	return 1;
}

const luaL_Reg lcore_session_methods[] = {
	{ "decide",	lsession_decide },
	{ "recipientVerdict", lsession_recipient_verdict },
	{ "feed",	lsession_feed },
	{ "eof",	lsession_eof },
	{ "timeout",	lsession_timeout },
	{ "shutdown",	lsession_shutdown },
	{ "pause",	lsession_pause },
	{ "resume",	lsession_resume },
	{ "sink",	lsession_sink },
	{ "dataListeners", lsession_data_listeners },
	{ "addHeader",	lsession_add_header },
	{ "setReverseName", lsession_set_reverse_name },
	{ "destroy",	lsession_destroy },
	{ "output",	lsession_output },
	{ "io",		lsession_io },
	{ "attach",	lsession_attach },
	{ "id",		lsession_id },
	{ "state",	lsession_state },
	{ "closed",	lsession_closed },
	{ "idle",	lsession_idle },
	{ "peer",	lsession_peer },
	{ "helo",	lsession_helo },
	{ "sender",	lsession_sender },
	{ "recipients",	lsession_recipients },
	{ "tls",	lsession_tls },
	{ "user",	lsession_user },
	{ "tls_started", lsession_tls_started },
	{ "starttls_pending", lsession_starttls_pending },
	{ NULL, NULL }
};
