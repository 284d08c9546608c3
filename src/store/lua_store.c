/*
 * lua_store.c -- smtp_store, the LMDB backend of smtp.store (lua/smtp/store.lua).
 *
 * Owns one LMDB environment per store (STATEDIR/NAME.mdb, one file and its
 * -lock file), the record format and every operation on it: get, set, add,
 * incr, delete, ttl and the background sweep of expired keys.  Every write
 * is one LMDB write transaction, so workers that share a file never lose an
 * update (LMDB serialises writers with a robust mutex in the lock file).
 *
 * A record is an 8-octet expiry (milliseconds since the epoch, 0: never),
 * one type octet ('s' string, 'i' integer, 'n' float) and the payload
 * (the string, or the 8 octets of the lua_Integer / lua_Number as stored
 * by memcpy: numbers round-trip exactly, integers stay integers).  Time
 * comes from the caller (smtp.now()), so expiry is the script's clock.
 *
 * An environment must never cross a fork: each handle remembers the pid
 * that opened it and refuses to run (and to close) in any other process.
 * Errors are Lua errors that name the store; nothing here aborts.
 *
 * Where the whole map can be reserved on the disk first (ext2/3/4, XFS,
 * tmpfs: posix_fallocate of maxSize), the environment is MDB_WRITEMAP: a
 * commit writes its pages in the map and msyncs them instead of a pwrite
 * per page, half the system time of a set.  LMDB grows the file to maxSize
 * for it; were that file sparse, a write into a hole of a full file system
 * would be a SIGBUS, hence the reservation, and hence no WRITEMAP on a
 * copy-on-write file system (btrfs, ZFS), where a reservation does not
 * hold.  Sync and durability are the same either way (docs/API.md).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/time.h>
#include <sys/types.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lmdb.h>
#include <lua.h>

#include "lua_store.h"

#define STORE_MT	"smtp_store.env"
#define STORE_NAME_MAX	64
#define STORE_KEY_MAX	511	/* LMDB's default maximum key size */
#define STORE_VALUE_MAX	65536	/* octets of a string value */
#define REC_HEAD	9	/* expiry (8) + type (1) */

struct store {
	MDB_env	*env;
	MDB_dbi	 dbi;
	pid_t	 pid;		/* the process that opened env */
	char	 name[STORE_NAME_MAX + 1];
	size_t	 map_size;
	char	 cursor[STORE_KEY_MAX];	/* where the sweep goes on */
	size_t	 cursor_len;
	MDB_txn	*rtxn;		/* the read txn get and ttl renew, or NULL */
	int	 rtxn_live;	/* rtxn renewed and not reset yet */
};

/*
 * This process's pid, without a getpid() system call per store call: set
 * at the first use and forgotten in the child of every fork.
 */
static pid_t self_pid;

static void
self_forget(void)
{
	self_pid = 0;
}

static pid_t
self(void)
{
	if (self_pid == 0)
		self_pid = getpid();
	return self_pid;
}

/* the store at 1; the methods have the metatable as upvalue 1, which spares
 * luaL_checkudata's registry lookup by name (still what raises, so the
 * message is its own) */
static struct store *
check_store(lua_State *L)
{
	struct store	*s = lua_touserdata(L, 1);
	int		 ok = 0;

	if (s != NULL && lua_getmetatable(L, 1)) {
		ok = lua_rawequal(L, -1, lua_upvalueindex(1));
		lua_pop(L, 1);
	}
	if (!ok)
		s = luaL_checkudata(L, 1, STORE_MT);

	if (s->env == NULL)
		luaL_error(L, "store %s: closed", s->name);
	if (s->pid != self())
		luaL_error(L, "store %s: opened in another process (an LMDB "
		    "environment cannot cross a fork)", s->name);
	return s;
}

/* raises "store NAME: what: LMDB's reason", after aborting txn (may be NULL) */
static int
store_fail(lua_State *L, struct store *s, MDB_txn *txn, const char *what, int rc)
{
	if (txn != NULL)
		mdb_txn_abort(txn);
	if (rc == MDB_MAP_FULL)
		return luaL_error(L, "store %s: full (maxSize is %I octets)", s->name,
		    (lua_Integer)s->map_size);
	return luaL_error(L, "store %s: %s: %s", s->name, what, mdb_strerror(rc));
}

static MDB_val
check_key(lua_State *L, struct store *s, int idx)
{
	MDB_val	 k;
	size_t	 len;
	const char *key = luaL_checklstring(L, idx, &len);

	if (len == 0 || len > STORE_KEY_MAX)
		luaL_error(L, "store %s: a key is 1 to %d octets (this one has %d)",
		    s->name, STORE_KEY_MAX, (int)len);
	k.mv_data = (void *)key;
	k.mv_size = len;
	return k;
}

/* the expiry of a ttl argument at idx (nil: 0, never) for now (ms) */
static int64_t
check_expiry(lua_State *L, struct store *s, int idx, int64_t now)
{
	lua_Number	ttl;
	int64_t		ms;

	if (lua_isnoneornil(L, idx))
		return 0;
	ttl = luaL_checknumber(L, idx);
	if (!(ttl > 0 && ttl <= 100 * 365 * 86400.0))
		luaL_error(L, "store %s: a ttl is a number of seconds > 0", s->name);
	ms = (int64_t)(ttl * 1000);
	if ((lua_Number)ms < ttl * 1000)
		ms++;		/* rounded up: never sooner than asked */
	return now + ms;
}

static int64_t
check_now(lua_State *L, int idx)
{
	lua_Number now = luaL_checknumber(L, idx);

	return now > 0 ? (int64_t)(now * 1000) : 0;	/* an epoch clock: >= 0 */
}

static int64_t
rec_expiry(const MDB_val *v)
{
	int64_t e;

	memcpy(&e, v->mv_data, sizeof(e));
	return e;
}

/* a record that is there and not expired at now */
static int
rec_live(const MDB_val *v, int64_t now)
{
	int64_t e;

	if (v->mv_size < REC_HEAD)
		return 0;
	e = rec_expiry(v);
	return e == 0 || e > now;
}

/* pushes the value of a live record */
static void
rec_push(lua_State *L, const MDB_val *v)
{
	const char	*p = (const char *)v->mv_data + REC_HEAD;
	size_t		 n = v->mv_size - REC_HEAD;

	switch (((const char *)v->mv_data)[8]) {
	case 'i': {
		lua_Integer i = 0;

		if (n == sizeof(i))
			memcpy(&i, p, sizeof(i));
		lua_pushinteger(L, i);
		break;
	}
	case 'n': {
		lua_Number d = 0;

		if (n == sizeof(d))
			memcpy(&d, p, sizeof(d));
		lua_pushnumber(L, d);
		break;
	}
	default:
		lua_pushlstring(L, p, n);
	}
}

/* a record for the value at idx (string or number) into buf (>= REC_HEAD + 8) */
struct rec {
	char		 head[REC_HEAD + 8];
	const char	*str;	/* a string's payload, else NULL */
	size_t		 len;	/* whole record */
};

static void
rec_make(lua_State *L, struct store *s, int idx, int64_t expiry, struct rec *r)
{
	memcpy(r->head, &expiry, sizeof(expiry));
	r->str = NULL;
	if (lua_type(L, idx) == LUA_TNUMBER) {
		if (lua_isinteger(L, idx)) {
			lua_Integer i = lua_tointeger(L, idx);

			r->head[8] = 'i';
			memcpy(r->head + REC_HEAD, &i, sizeof(i));
		} else {
			lua_Number d = lua_tonumber(L, idx);

			r->head[8] = 'n';
			memcpy(r->head + REC_HEAD, &d, sizeof(d));
		}
		r->len = REC_HEAD + 8;
	} else if (lua_type(L, idx) == LUA_TSTRING) {
		r->str = lua_tolstring(L, idx, &r->len);
		if (r->len > STORE_VALUE_MAX)
			luaL_error(L, "store %s: a value is at most %d octets (this one "
			    "has %d)", s->name, STORE_VALUE_MAX, (int)r->len);
		r->head[8] = 's';
		r->len += REC_HEAD;
	} else {
		luaL_error(L, "store %s: a value is a string or a number (got %s)",
		    s->name, luaL_typename(L, idx));
	}
}

/* writes r under k in txn (MDB_RESERVE: one copy) */
static int
rec_put(MDB_txn *txn, struct store *s, MDB_val *k, const struct rec *r)
{
	MDB_val	 v;
	int	 rc;

	v.mv_size = r->len;
	if ((rc = mdb_put(txn, s->dbi, k, &v, MDB_RESERVE)) != 0)
		return rc;
	if (r->str != NULL) {
		memcpy(v.mv_data, r->head, REC_HEAD);
		memcpy((char *)v.mv_data + REC_HEAD, r->str, r->len - REC_HEAD);
	} else {
		memcpy(v.mv_data, r->head, r->len);
	}
	return 0;
}

/* a file system where posix_fallocate reserves blocks that later writes use */
static int
writemap_fits(const char *path)
{
	char		 dir[4096];
	const char	*slash = strrchr(path, '/');
	struct statfs	 fs;
	size_t		 n;

	if (slash == NULL) {
		snprintf(dir, sizeof(dir), ".");
	} else {
		n = (size_t)(slash - path);
		if (n == 0)
			n = 1;		/* "/x.mdb" */
		if (n >= sizeof(dir))
			return 0;
		memcpy(dir, path, n);
		dir[n] = '\0';
	}
	if (statfs(dir, &fs) == -1)
		return 0;
	switch ((unsigned long)fs.f_type) {
	case 0xEF53UL:		/* ext2, ext3, ext4 */
	case 0x58465342UL:	/* XFS */
	case 0x01021994UL:	/* tmpfs */
		return 1;
	default:
		return 0;
	}
}

/* the environment of s at path, or an LMDB error (s->env NULL then) */
static int
env_open(struct store *s, const char *path, unsigned flags)
{
	int rc;

	if ((rc = mdb_env_create(&s->env)) != 0) {
		s->env = NULL;
		return rc;
	}
	if ((rc = mdb_env_set_mapsize(s->env, s->map_size)) != 0 ||
	    (rc = mdb_env_set_maxreaders(s->env, 254)) != 0 ||
	    (rc = mdb_env_open(s->env, path, flags, 0600)) != 0) {
		mdb_env_close(s->env);
		s->env = NULL;
	}
	return rc;
}

/* reserves the whole map on the disk: 1, or 0 if it cannot be */
static int
map_reserve(struct store *s)
{
	mdb_filehandle_t	fd;

	if (mdb_env_get_fd(s->env, &fd) != 0)
		return 0;
	return posix_fallocate(fd, 0, (off_t)s->map_size) == 0;
}

/*
 * smtp_store.open(path, mapsize, name[, nosync]) -> store; nosync: commits
 * do not wait for the disk (MDB_NOSYNC), store:flush() does
 */
static int
store_open(lua_State *L)
{
	const char	*path = luaL_checkstring(L, 1);
	lua_Integer	 map = luaL_checkinteger(L, 2);
	size_t		 nlen;
	const char	*name = luaL_checklstring(L, 3, &nlen);
	unsigned	 flags = MDB_NOSUBDIR | MDB_NOTLS;
	struct store	*s;
	MDB_txn		*txn;
	int		 rc, dead;

	if (lua_toboolean(L, 4))
		flags |= MDB_NOSYNC;

	luaL_argcheck(L, nlen > 0 && nlen <= STORE_NAME_MAX, 3, "1 to 64 octets");
	luaL_argcheck(L, map >= 65536 && map <= ((lua_Integer)1 << 40), 2,
	    "65536 to 2^40");
	s = lua_newuserdatauv(L, sizeof(*s), 0);
	memset(s, 0, sizeof(*s));
	memcpy(s->name, name, nlen);
	s->pid = self();
	s->map_size = (size_t)map;
	luaL_setmetatable(L, STORE_MT);
	if (writemap_fits(path))
		flags |= MDB_WRITEMAP;
	if ((rc = env_open(s, path, flags)) == 0 && (flags & MDB_WRITEMAP) &&
	    !map_reserve(s)) {
		/* no room for the whole map: pages written by pwrite, as LMDB's default */
		mdb_env_close(s->env);
		rc = env_open(s, path, flags & ~MDB_WRITEMAP);
	}
	if (rc != 0)
		return luaL_error(L, "store %s: cannot open %s: %s", name, path,
		    mdb_strerror(rc));
	/* readers left by a worker that died */
	mdb_reader_check(s->env, &dead);
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
		return store_fail(L, s, NULL, "begin", rc);
	if ((rc = mdb_dbi_open(txn, NULL, 0, &s->dbi)) != 0)
		return store_fail(L, s, txn, "open", rc);
	if ((rc = mdb_txn_commit(txn)) != 0)
		return store_fail(L, s, NULL, "commit", rc);
	return 1;
}

/* drops the read txn's snapshot (it keeps its reader slot for the next renew) */
static void
rtxn_reset(struct store *s)
{
	if (s->rtxn_live) {
		mdb_txn_reset(s->rtxn);
		s->rtxn_live = 0;
	}
}

/*
 * the store's read txn on the newest snapshot: one txn per handle, reset
 * after each call and renewed by the next (a begin and an abort cost a
 * reader slot's search each time).  A push that raised between renew and
 * reset leaves it live: the next call resets it first.
 */
static MDB_txn *
rtxn_renew(lua_State *L, struct store *s)
{
	int rc;

	rtxn_reset(s);
	if (s->rtxn == NULL)
		rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &s->rtxn);
	else
		rc = mdb_txn_renew(s->rtxn);
	if (rc != 0) {
		if (s->rtxn != NULL)
			mdb_txn_abort(s->rtxn);
		s->rtxn = NULL;
		store_fail(L, s, NULL, "begin", rc);
	}
	s->rtxn_live = 1;
	return s->rtxn;
}

/* get's work: pushes the value of k at now, or nil */
static int
get_at(lua_State *L, struct store *s, MDB_val k, int64_t now)
{
	MDB_txn		*txn = rtxn_renew(L, s);
	MDB_val		 v;
	int		 rc;

	rc = mdb_get(txn, s->dbi, &k, &v);
	if (rc != 0 && rc != MDB_NOTFOUND) {
		rtxn_reset(s);
		return store_fail(L, s, NULL, "get", rc);
	}
	if (rc == 0 && rec_live(&v, now))
		rec_push(L, &v);	/* copies out of the map before the reset */
	else
		lua_pushnil(L);
	rtxn_reset(s);
	return 1;
}

/* store:get(key, now) -> value | nil */
static int
store_get(lua_State *L)
{
	struct store	*s = check_store(L);
	MDB_val		 k = check_key(L, s, 2);

	return get_at(L, s, k, check_now(L, 3));
}

/* store:ttl(key, now) -> seconds left | math.huge (no expiry) | nil */
static int
store_ttl(lua_State *L)
{
	struct store	*s = check_store(L);
	MDB_val		 k = check_key(L, s, 2), v;
	int64_t		 now = check_now(L, 3);
	MDB_txn		*txn = rtxn_renew(L, s);
	int64_t		 e = 0;
	int		 rc, live;

	rc = mdb_get(txn, s->dbi, &k, &v);
	if ((live = rc == 0 && rec_live(&v, now)))
		e = rec_expiry(&v);
	rtxn_reset(s);		/* v is not read after this */
	if (live) {
		lua_pushnumber(L, e == 0 ? HUGE_VAL : (lua_Number)(e - now) / 1000);
	} else if (rc == 0 || rc == MDB_NOTFOUND) {
		lua_pushnil(L);
	} else {
		return store_fail(L, s, NULL, "ttl", rc);
	}
	return 1;
}

/* set's work: the value at 3 under k until expiry; add: only if absent at now */
static int
set_at(lua_State *L, struct store *s, MDB_val k, int64_t now, int64_t expiry, int add)
{
	MDB_val		 v;
	int		 rc;
	struct rec	 r;
	MDB_txn		*txn;

	rec_make(L, s, 3, expiry, &r);
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
		return store_fail(L, s, NULL, "begin", rc);
	if (add) {
		rc = mdb_get(txn, s->dbi, &k, &v);
		if (rc == 0 && rec_live(&v, now)) {
			mdb_txn_abort(txn);
			lua_pushboolean(L, 0);
			return 1;
		}
		if (rc != 0 && rc != MDB_NOTFOUND)
			return store_fail(L, s, txn, "add", rc);
	}
	if ((rc = rec_put(txn, s, &k, &r)) != 0)
		return store_fail(L, s, txn, "set", rc);
	if ((rc = mdb_txn_commit(txn)) != 0)
		return store_fail(L, s, NULL, "commit", rc);
	lua_pushboolean(L, 1);
	return 1;
}

/* store:set(key, value, ttl, now, only_if_absent) -> true | false (present) */
static int
store_set(lua_State *L)
{
	struct store	*s = check_store(L);
	MDB_val		 k = check_key(L, s, 2);
	int64_t		 now = check_now(L, 5);
	int64_t		 expiry = check_expiry(L, s, 4, now);

	return set_at(L, s, k, now, expiry, lua_toboolean(L, 6));
}

/*
 * db:get and db:set of smtp.store, bound to one store (upvalue 1) and its
 * clock (upvalue 2, smtp.now): what a handler calls, with no Lua in
 * between.  They check their arguments as smtp.store's API does, with its
 * messages, raised at the handler's line.
 */
static int
arg_error(lua_State *L, const char *fmt, ...)
{
	va_list ap;

	luaL_where(L, 1);
	va_start(ap, fmt);
	lua_pushvfstring(L, fmt, ap);
	va_end(ap);
	lua_concat(L, 2);
	return lua_error(L);
}

static struct store *
bound_store(lua_State *L, int64_t *now)
{
	struct store *s = lua_touserdata(L, lua_upvalueindex(1));

	if (s->env == NULL)
		luaL_error(L, "store %s: closed", s->name);
	if (s->pid != self())
		luaL_error(L, "store %s: opened in another process (an LMDB "
		    "environment cannot cross a fork)", s->name);
	lua_pushvalue(L, lua_upvalueindex(2));
	lua_call(L, 0, 1);
	*now = check_now(L, -1);
	lua_pop(L, 1);
	return s;
}

static MDB_val
bound_key(lua_State *L, struct store *s)
{
	MDB_val	 k;
	size_t	 len;

	if (lua_type(L, 2) != LUA_TSTRING)
		arg_error(L, "store %s: a key is a string (got %s)", s->name, luaL_typename(L, 2));
	k.mv_data = (void *)lua_tolstring(L, 2, &len);
	k.mv_size = len;
	if (len == 0 || len > STORE_KEY_MAX)
		arg_error(L, "store %s: a key is 1 to %d octets (this one has %d)", s->name,
		    STORE_KEY_MAX, (int)len);
	return k;
}

/* db:get(key) -> value | nil */
static int
bound_get(lua_State *L)
{
	int64_t		 now;
	struct store	*s = bound_store(L, &now);

	return get_at(L, s, bound_key(L, s), now);
}

/* db:set(key, value[, ttl]) -> true */
static int
bound_set(lua_State *L)
{
	int64_t		 now, expiry = 0;
	struct store	*s = bound_store(L, &now);
	MDB_val		 k = bound_key(L, s);
	int		 t = lua_type(L, 3);
	lua_Number	 ttl;

	if (t == LUA_TNUMBER && !lua_isinteger(L, 3) && isnan(lua_tonumber(L, 3)))
		arg_error(L, "store %s: a value cannot be NaN", s->name);
	if (t != LUA_TNUMBER && t != LUA_TSTRING)
		arg_error(L, "store %s: a value is a string or a number (got %s)", s->name,
		    luaL_typename(L, 3));
	if (t == LUA_TSTRING && lua_rawlen(L, 3) > STORE_VALUE_MAX)
		arg_error(L, "store %s: a value is at most %d octets (this one has %d)", s->name,
		    STORE_VALUE_MAX, (int)lua_rawlen(L, 3));
	if (!lua_isnoneornil(L, 4)) {
		ttl = lua_tonumber(L, 4);
		if (lua_type(L, 4) != LUA_TNUMBER || !(ttl > 0 && ttl <= 100 * 365 * 86400.0))
			arg_error(L, "store %s: a ttl is a number of seconds > 0 (got %s)", s->name,
			    luaL_tolstring(L, 4, NULL));
		expiry = check_expiry(L, s, 4, now);
	}
	lua_settop(L, 3);
	return set_at(L, s, k, now, expiry, 0);
}

/* store:bind(now) -> get, set: db:get and db:set on this store, now() its clock */
static int
store_bind(lua_State *L)
{
	check_store(L);
	luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_settop(L, 2);
	lua_pushvalue(L, 1);
	lua_pushvalue(L, 2);
	lua_pushcclosure(L, bound_get, 2);
	lua_pushvalue(L, 1);
	lua_pushvalue(L, 2);
	lua_pushcclosure(L, bound_set, 2);
	return 2;
}

/* store:incr(key, by, ttl, now) -> new value (ttl applies to a new key) */
static int
store_incr(lua_State *L)
{
	struct store	*s = check_store(L);
	MDB_val		 k = check_key(L, s, 2), v;
	int64_t		 now = check_now(L, 5);
	int64_t		 expiry = check_expiry(L, s, 4, now);
	struct rec	 r;
	MDB_txn		*txn;
	int		 rc;

	luaL_checknumber(L, 3);
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
		return store_fail(L, s, NULL, "begin", rc);
	rc = mdb_get(txn, s->dbi, &k, &v);
	if (rc != 0 && rc != MDB_NOTFOUND)
		return store_fail(L, s, txn, "incr", rc);
	if (rc == 0 && rec_live(&v, now)) {
		char type = ((const char *)v.mv_data)[8];

		if (type != 'i' && type != 'n') {
			mdb_txn_abort(txn);
			return luaL_error(L, "store %s: incr of a value that is not a "
			    "number", s->name);
		}
		expiry = rec_expiry(&v);	/* an existing key keeps its ttl */
		rec_push(L, &v);
		lua_pushvalue(L, 3);
		lua_arith(L, LUA_OPADD);	/* integers wrap, as in Lua */
	} else {
		lua_pushvalue(L, 3);
	}
	rec_make(L, s, -1, expiry, &r);
	if ((rc = rec_put(txn, s, &k, &r)) != 0)
		return store_fail(L, s, txn, "incr", rc);
	if ((rc = mdb_txn_commit(txn)) != 0)
		return store_fail(L, s, NULL, "commit", rc);
	return 1;
}

/* store:delete(key) -> true | false (absent) */
static int
store_delete(lua_State *L)
{
	struct store	*s = check_store(L);
	MDB_val		 k = check_key(L, s, 2);
	MDB_txn		*txn;
	int		 rc;

	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
		return store_fail(L, s, NULL, "begin", rc);
	rc = mdb_del(txn, s->dbi, &k, NULL);
	if (rc == MDB_NOTFOUND) {
		mdb_txn_abort(txn);
		lua_pushboolean(L, 0);
		return 1;
	}
	if (rc != 0)
		return store_fail(L, s, txn, "delete", rc);
	if ((rc = mdb_txn_commit(txn)) != 0)
		return store_fail(L, s, NULL, "commit", rc);
	lua_pushboolean(L, 1);
	return 1;
}

/*
 * store:sweep(now, max) -> removed: looks at up to max keys from where the
 * last sweep stopped (wrapping at the end) and deletes the expired ones, in
 * one write transaction, so a sweep holds the writers up for a bounded time.
 */
static int
store_sweep(lua_State *L)
{
	struct store	*s = check_store(L);
	int64_t		 now = check_now(L, 2);
	lua_Integer	 max = luaL_checkinteger(L, 3), seen = 0, removed = 0;
	MDB_txn		*txn;
	MDB_cursor	*cur;
	MDB_val		 k, v;
	int		 rc;

	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
		return store_fail(L, s, NULL, "begin", rc);
	if ((rc = mdb_cursor_open(txn, s->dbi, &cur)) != 0)
		return store_fail(L, s, txn, "sweep", rc);
	k.mv_data = s->cursor;
	k.mv_size = s->cursor_len;
	rc = s->cursor_len > 0 ? mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE) :
	    mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	while (rc == 0 && seen < max) {
		seen++;
		if (!rec_live(&v, now)) {
			if ((rc = mdb_cursor_del(cur, 0)) != 0)
				break;
			removed++;
			/* after a delete, MDB_NEXT gives the key that followed */
			rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
			continue;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (rc == 0 && k.mv_size <= sizeof(s->cursor)) {
		memcpy(s->cursor, k.mv_data, k.mv_size);
		s->cursor_len = k.mv_size;
	} else if (rc == MDB_NOTFOUND || rc == 0) {
		s->cursor_len = 0;	/* the end: start over next time */
	} else {
		mdb_cursor_close(cur);
		return store_fail(L, s, txn, "sweep", rc);
	}
	mdb_cursor_close(cur);
	if ((rc = mdb_txn_commit(txn)) != 0)
		return store_fail(L, s, NULL, "commit", rc);
	lua_pushinteger(L, removed);
	return 1;
}

/* store:close(): also what the garbage collector does, in the opener only */
static int
store_close(lua_State *L)
{
	struct store *s = luaL_checkudata(L, 1, STORE_MT);

	if (s->env != NULL && s->pid == self()) {
		if (s->rtxn != NULL)
			mdb_txn_abort(s->rtxn);
		mdb_env_close(s->env);
	}
	s->rtxn = NULL;
	s->env = NULL;
	return 0;
}

/* store:flush(): what a nosync store committed, to the disk */
static int
store_flush(lua_State *L)
{
	struct store	*s = check_store(L);
	int		 rc;

	if ((rc = mdb_env_sync(s->env, 1)) != 0)
		return store_fail(L, s, NULL, "flush", rc);
	return 0;
}

/* store:copy(path): a consistent copy of the file (mdb_copy's) */
static int
store_copy(lua_State *L)
{
	struct store	*s = check_store(L);
	const char	*path = luaL_checkstring(L, 2);
	int		 rc;

	if ((rc = mdb_env_copy2(s->env, path, MDB_CP_COMPACT)) != 0)
		return store_fail(L, s, NULL, "copy", rc);
	return 0;
}

/* ---- luasmtpd --store-dump ------------------------------------------------ */

/* s[0..n) as text: C escapes for control octets, backslash, '"' and tab */
static void
dump_escaped(FILE *out, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch == '\\' || ch == '"')
			fprintf(out, "\\%c", ch);
		else if (ch == '\t')
			fputs("\\t", out);
		else if (ch == '\n')
			fputs("\\n", out);
		else if (ch < 0x20 || ch == 0x7f)
			fprintf(out, "\\x%02x", ch);
		else
			fputc(ch, out);
	}
}

/* one RESP bulk string */
static void
dump_bulk(FILE *out, const char *s, size_t n)
{
	fprintf(out, "$%zu\r\n", n);
	fwrite(s, 1, n, out);
	fputs("\r\n", out);
}

/* a number as the Redis backend writes it (store.lua's encode_number) */
static void
dump_number(char *buf, size_t len, const MDB_val *v)
{
	const char	*p = (const char *)v->mv_data + REC_HEAD;
	lua_Integer	 i = 0;
	lua_Number	 d = 0;

	if (((const char *)v->mv_data)[8] == 'i') {
		if (v->mv_size == REC_HEAD + sizeof(i))
			memcpy(&i, p, sizeof(i));
		snprintf(buf, len, LUA_INTEGER_FMT, i);
		return;
	}
	if (v->mv_size == REC_HEAD + sizeof(d))
		memcpy(&d, p, sizeof(d));
	if (isinf(d)) {
		snprintf(buf, len, "%s", d > 0 ? "inf" : "-inf");
		return;
	}
	snprintf(buf, len, "%.17g", d);
	if (strspn(buf, "-0123456789") == strlen(buf))
		strncat(buf, ".0", len - strlen(buf) - 1);
}

int
store_dump(const char *dir, const char *name, int redis, FILE *out, char *err, size_t errlen)
{
	char		 path[4096], num[64];
	MDB_env		*env = NULL;
	MDB_txn		*txn = NULL;
	MDB_cursor	*cur = NULL;
	MDB_dbi		 dbi;
	MDB_val		 k, v;
	struct timeval	 tv;
	int64_t		 now, left;
	size_t		 nlen = strlen(name);
	int		 rc;

	if (nlen == 0 || nlen > STORE_NAME_MAX || strspn(name, "abcdefghijklmnopqrstuvwxyz"
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != nlen || name[0] == '.' ||
	    name[0] == '-') {
		snprintf(err, errlen, "bad store name '%s' (1 to 64 letters, digits, '_', '-' "
		    "or '.')", name);
		return -1;
	}
	if ((size_t)snprintf(path, sizeof(path), "%s/%s.mdb", dir, name) >= sizeof(path)) {
		snprintf(err, errlen, "state directory name too long");
		return -1;
	}
	gettimeofday(&tv, NULL);
	now = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
	if ((rc = mdb_env_create(&env)) != 0 ||
	    (rc = mdb_env_open(env, path, MDB_RDONLY | MDB_NOSUBDIR, 0600)) != 0 ||
	    (rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn)) != 0 ||
	    (rc = mdb_dbi_open(txn, NULL, 0, &dbi)) != 0 ||
	    (rc = mdb_cursor_open(txn, dbi, &cur)) != 0) {
		snprintf(err, errlen, "store %s: cannot read %s: %s", name, path, mdb_strerror(rc));
		goto fail;
	}
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	    rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		char type;

		if (!rec_live(&v, now))
			continue;
		type = ((const char *)v.mv_data)[8];
		left = rec_expiry(&v) == 0 ? 0 : rec_expiry(&v) - now;
		if (type != 's')
			dump_number(num, sizeof(num), &v);
		if (redis) {
			fputs(left > 0 ? "*5\r\n" : "*3\r\n", out);
			dump_bulk(out, "SET", 3);
			fprintf(out, "$%zu\r\n%s:", nlen + 1 + k.mv_size, name);
			fwrite(k.mv_data, 1, k.mv_size, out);
			fputs("\r\n", out);
			if (type == 's') {
				fprintf(out, "$%zu\r\ns:", v.mv_size - REC_HEAD + 2);
				fwrite((const char *)v.mv_data + REC_HEAD, 1, v.mv_size - REC_HEAD, out);
				fputs("\r\n", out);
			} else {
				dump_bulk(out, num, strlen(num));
			}
			if (left > 0) {
				dump_bulk(out, "PX", 2);
				snprintf(num, sizeof(num), "%lld", (long long)left);
				dump_bulk(out, num, strlen(num));
			}
			continue;
		}
		dump_escaped(out, k.mv_data, k.mv_size);
		if (left > 0)
			fprintf(out, "\t%.3f\t", (double)left / 1000);
		else
			fputs("\t-\t", out);
		if (type == 's') {
			fputc('"', out);
			dump_escaped(out, (const char *)v.mv_data + REC_HEAD, v.mv_size - REC_HEAD);
			fputs("\"\n", out);
		} else {
			fprintf(out, "%s\n", num);
		}
	}
	if (rc != MDB_NOTFOUND) {
		snprintf(err, errlen, "store %s: %s: %s", name, path, mdb_strerror(rc));
		goto fail;
	}
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	mdb_env_close(env);
	if (fflush(out) == EOF || ferror(out)) {
		snprintf(err, errlen, "store %s: cannot write the dump", name);
		return -1;
	}
	return 0;
fail:
	if (cur != NULL)
		mdb_cursor_close(cur);
	if (txn != NULL)
		mdb_txn_abort(txn);
	if (env != NULL)
		mdb_env_close(env);
	return -1;
}

static const luaL_Reg store_methods[] = {
	{ "get",	store_get },
	{ "set",	store_set },
	{ "incr",	store_incr },
	{ "delete",	store_delete },
	{ "ttl",	store_ttl },
	{ "sweep",	store_sweep },
	{ "copy",	store_copy },
	{ "flush",	store_flush },
	{ "close",	store_close },
	{ "bind",	store_bind },
	{ NULL,		NULL }
};

int
luaopen_smtp_store(lua_State *L)
{
	static int at_fork;

	if (!at_fork && pthread_atfork(NULL, NULL, self_forget) == 0)
		at_fork = 1;
	if (luaL_newmetatable(L, STORE_MT)) {
		luaL_newlibtable(L, store_methods);
		lua_pushvalue(L, -2);
		luaL_setfuncs(L, store_methods, 1);	/* upvalue: the metatable */
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, store_close);
		lua_setfield(L, -2, "__gc");
	}
	lua_pop(L, 1);
	lua_createtable(L, 0, 4);
	lua_pushcfunction(L, store_open);
	lua_setfield(L, -2, "open");
	lua_pushinteger(L, STORE_KEY_MAX);
	lua_setfield(L, -2, "KEY_MAX");
	lua_pushinteger(L, STORE_VALUE_MAX);
	lua_setfield(L, -2, "VALUE_MAX");
	lua_pushcfunction(L, lstore_redis);
	lua_setfield(L, -2, "redis");
	return 1;
}
