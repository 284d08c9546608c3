/*
 * connlimit.c -- the shared connection counters of connlimit.h.
 *
 * Owns the region the master maps before forking (one struct cl_slot per
 * worker process) and this process's view of it: its own slot, which only
 * it writes, and its limits.  Readers never lock: keys and counts are read
 * with atomic loads, and a key read again after its count tells a reused
 * entry (its owner rewrote it meanwhile) from the one that was looked up.
 */
#include <sys/mman.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "connlimit.h"

struct cl_entry {
	uint64_t	tag;		/* 0: never used (ends a probe) */
	uint64_t	v;
	uint32_t	count;		/* 0: free for another key */
	uint32_t	pad;
};

/*
 * The region: the slots' in_use flags and totals side by side first (every
 * accept reads them all: a few cache lines, not a page per slot), then the
 * slots' tables.
 */
struct cl_slot {
	struct cl_entry	e[CONNLIMIT_ENTRIES];
};

struct cl_private {
	uint32_t	total;
	struct cl_slot	slot;
};

static void		*region;
static size_t		 region_len;
static uint32_t		*in_use;	/* [nslots]: a live worker owns it */
static uint32_t		*totals;	/* [nslots]: its live connections */
static struct cl_slot	*slots;		/* [nslots] */
static unsigned		 nslots;
static struct cl_slot	*own;		/* this worker's */
static uint32_t		*own_total;
static struct cl_private *private_slot;	/* when no shared slot was free */
static unsigned		 limit_total, limit_client;

static uint64_t
cl_hash(const struct connlimit_key *k)
{
	uint64_t x = k->v ^ (k->tag << 59);

	/* splitmix64's finaliser */
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

static uint32_t
cl_load(const uint32_t *p)
{
	return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}

int
connlimit_map(unsigned n)
{
	size_t	 head = ((size_t)n * 2 * sizeof(uint32_t) + 63) & ~(size_t)63;
	void	*p;

	connlimit_unmap();
	region_len = head + (size_t)n * sizeof(struct cl_slot);
	p = mmap(NULL, region_len, PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	region = p;
	in_use = p;
	totals = in_use + n;
	slots = (struct cl_slot *)((char *)p + head);
	nslots = n;
	return 0;
}

void
connlimit_unmap(void)
{
	if (region != NULL)
		munmap(region, region_len);
	region = NULL;
	in_use = totals = NULL;
	slots = NULL;
	nslots = 0;
	own = NULL;
	own_total = NULL;
	free(private_slot);
	private_slot = NULL;
}

int
connlimit_slot_take(void)
{
	for (unsigned i = 0; i < nslots; i++)
		if (cl_load(&in_use[i]) == 0) {
			memset(slots[i].e, 0, sizeof(slots[i].e));
			__atomic_store_n(&totals[i], 0, __ATOMIC_SEQ_CST);
			__atomic_store_n(&in_use[i], 1, __ATOMIC_SEQ_CST);
			return (int)i;
		}
	return -1;
}

void
connlimit_slot_free(int slot)
{
	if (slot < 0 || (unsigned)slot >= nslots)
		return;
	/* readers skip it from now on; connlimit_slot_take() clears it */
	__atomic_store_n(&in_use[slot], 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&totals[slot], 0, __ATOMIC_SEQ_CST);
}

void
connlimit_attach(int slot)
{
	if (slot >= 0 && (unsigned)slot < nslots) {
		own = &slots[slot];
		own_total = &totals[slot];
		return;
	}
	if (private_slot == NULL &&
	    (private_slot = calloc(1, sizeof(*private_slot))) == NULL)
		return;		/* counts nothing: refuses nothing */
	own = &private_slot->slot;
	own_total = &private_slot->total;
}

void
connlimit_set_limits(unsigned max_total, unsigned max_per_client)
{
	limit_total = max_total;
	limit_client = max_per_client;
}

bool
connlimit_active(void)
{
	return own != NULL;
}

bool
connlimit_key_sa(const struct sockaddr *sa, struct connlimit_key *k)
{
	static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

		k->tag = 4;
		k->v = ntohl(sin->sin_addr.s_addr);
		return true;
	}
	if (sa->sa_family == AF_INET6) {
		const uint8_t	*a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
		uint64_t	 v = 0;

		if (memcmp(a, mapped, sizeof(mapped)) == 0) {
			k->tag = 4;
			k->v = (uint64_t)a[12] << 24 | (uint64_t)a[13] << 16 |
			    (uint64_t)a[14] << 8 | a[15];
			return true;
		}
		for (int i = 0; i < 8; i++)	/* the /64 */
			v = v << 8 | a[i];
		k->tag = 6;
		k->v = v;
		return true;
	}
	return false;
}

bool
connlimit_key_str(const char *addr, struct connlimit_key *k)
{
	struct sockaddr_in	sin;
	struct sockaddr_in6	sin6;

	memset(&sin, 0, sizeof(sin));
	memset(&sin6, 0, sizeof(sin6));
	if (inet_pton(AF_INET, addr, &sin.sin_addr) == 1) {
		sin.sin_family = AF_INET;
		return connlimit_key_sa((struct sockaddr *)&sin, k);
	}
	if (inet_pton(AF_INET6, addr, &sin6.sin6_addr) == 1) {
		sin6.sin6_family = AF_INET6;
		return connlimit_key_sa((struct sockaddr *)&sin6, k);
	}
	return false;
}

/* k's live connections in slot s (0: not found). */
static unsigned
cl_slot_count(const struct cl_slot *s, const struct connlimit_key *k, uint64_t h)
{
	for (unsigned i = 0; i < CONNLIMIT_PROBE; i++) {
		const struct cl_entry	*e = &s->e[(h + i) % CONNLIMIT_ENTRIES];
		uint64_t		 tag = __atomic_load_n(&e->tag, __ATOMIC_SEQ_CST);
		uint32_t		 n;

		if (tag == 0)
			return 0;
		if (tag != k->tag || __atomic_load_n(&e->v, __ATOMIC_SEQ_CST) != k->v)
			continue;
		n = cl_load(&e->count);
		/* the owner reuses an entry whose count is 0: still ours? */
		if (__atomic_load_n(&e->tag, __ATOMIC_SEQ_CST) == k->tag &&
		    __atomic_load_n(&e->v, __ATOMIC_SEQ_CST) == k->v)
			return n;
	}
	return 0;
}

/* The owner: k's entry in its slot, created if need be; NULL when none is free. */
static struct cl_entry *
cl_own_entry(const struct connlimit_key *k, uint64_t h)
{
	struct cl_entry	*reuse = NULL;

	for (unsigned i = 0; i < CONNLIMIT_PROBE; i++) {
		struct cl_entry *e = &own->e[(h + i) % CONNLIMIT_ENTRIES];

		if (e->tag == k->tag && e->v == k->v)
			return e;
		if (e->tag == 0) {
			if (reuse == NULL)
				reuse = e;
			break;
		}
		if (reuse == NULL && e->count == 0)
			reuse = e;
	}
	if (reuse != NULL) {
		/* its count is 0: readers that still match the old key read 0 */
		__atomic_store_n(&reuse->v, k->v, __ATOMIC_SEQ_CST);
		__atomic_store_n(&reuse->tag, k->tag, __ATOMIC_SEQ_CST);
	}
	return reuse;
}

static bool
cl_own_private(void)
{
	return private_slot != NULL && own == &private_slot->slot;
}

static unsigned
cl_total(void)
{
	unsigned n = cl_own_private() ? cl_load(own_total) : 0;

	for (unsigned i = 0; i < nslots; i++)
		if (cl_load(&in_use[i]))
			n += cl_load(&totals[i]);
	return n;
}

static unsigned
cl_sum(const struct connlimit_key *k, uint64_t h)
{
	unsigned n = cl_own_private() ? cl_slot_count(own, k, h) : 0;

	for (unsigned i = 0; i < nslots; i++)
		if (cl_load(&in_use[i]))
			n += cl_slot_count(&slots[i], k, h);
	return n;
}

enum connlimit_verdict
connlimit_acquire(const struct connlimit_key *k, unsigned *client,
    unsigned *total)
{
	struct cl_entry		*e = NULL;
	enum connlimit_verdict	 v;
	uint64_t		 h = 0;
	unsigned		 n;

	if (client != NULL)
		*client = 0;
	if (total != NULL)
		*total = 0;
	if (own == NULL)
		return CONNLIMIT_OK;
	if (k != NULL) {
		h = cl_hash(k);
		e = cl_own_entry(k, h);
	}
	/* count first, then look: two racing workers cannot both get the last place */
	if (e != NULL)
		__atomic_add_fetch(&e->count, 1, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(own_total, 1, __ATOMIC_SEQ_CST);
	n = cl_total();
	if (total != NULL)
		*total = n;
	if (limit_total != 0 && n > limit_total) {
		v = CONNLIMIT_TOTAL;
		goto refuse;
	}
	if (e != NULL && (limit_client != 0 || client != NULL)) {
		n = cl_sum(k, h);
		if (client != NULL)
			*client = n;
		if (limit_client != 0 && n > limit_client) {
			v = CONNLIMIT_CLIENT;
			goto refuse;
		}
	}
	return CONNLIMIT_OK;
refuse:
	if (v == CONNLIMIT_TOTAL && total != NULL)
		*total = n - 1;		/* what is live without this one */
	if (v == CONNLIMIT_CLIENT && client != NULL)
		*client = n - 1;
	if (e != NULL)
		__atomic_sub_fetch(&e->count, 1, __ATOMIC_SEQ_CST);
	__atomic_sub_fetch(own_total, 1, __ATOMIC_SEQ_CST);
	return v;
}

void
connlimit_release(const struct connlimit_key *k)
{
	if (own == NULL)
		return;
	if (k != NULL) {
		uint64_t h = cl_hash(k);

		for (unsigned i = 0; i < CONNLIMIT_PROBE; i++) {
			struct cl_entry *e = &own->e[(h + i) % CONNLIMIT_ENTRIES];

			if (e->tag == 0)
				break;
			if (e->tag == k->tag && e->v == k->v) {
				if (e->count > 0)
					__atomic_sub_fetch(&e->count, 1, __ATOMIC_SEQ_CST);
				break;
			}
		}
	}
	if (*own_total > 0)
		__atomic_sub_fetch(own_total, 1, __ATOMIC_SEQ_CST);
}

unsigned
connlimit_count(const struct connlimit_key *k)
{
	if (own == NULL || k == NULL)
		return 0;
	return cl_sum(k, cl_hash(k));
}
