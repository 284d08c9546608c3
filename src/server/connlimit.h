/*
 * connlimit.h -- live connections per client and in all, counted across
 * every worker: server.maxConnections and server.maxConnectionsPerClient.
 *
 * The master maps one region (MAP_SHARED, before any fork) holding a slot
 * per worker process; each slot is a fixed-size open-addressing table of
 * client keys (an IPv4 address, or the /64 of an IPv6 one) with a count,
 * and the slot's total.  Only the worker that owns a slot writes it (no
 * locks: atomic counters); every worker reads every slot in use, so a
 * client's count is the sum over the slots.  When a worker dies, however it
 * dies, the master clears its slot as it reaps it: what it held is gone
 * with it, nothing to recount.  Without worker processes (--workers 0) the
 * same code runs on one slot.
 *
 * Accepting: the worker adds the client to its own slot first, then sums;
 * over a limit it takes it back and refuses.  Two workers racing for the
 * last place may both refuse, never both accept beyond the limit.
 *
 * Bounds: CONNLIMIT_ENTRIES clients per slot, found within CONNLIMIT_PROBE
 * probes.  A client that finds no entry in its worker's slot (thousands of
 * distinct clients on one worker) is counted in the slot's total only: the
 * total limit still holds, the per-client limit does not see it (logged).
 */
#ifndef LUASMTPD_CONNLIMIT_H
#define LUASMTPD_CONNLIMIT_H

#include <stdbool.h>
#include <stdint.h>

#include <sys/socket.h>

#define CONNLIMIT_ENTRIES	4096	/* distinct clients per worker slot */
#define CONNLIMIT_PROBE		64

/* A client: tag 4 (IPv4, v = the address) or 6 (v = the /64); 0: none. */
struct connlimit_key {
	uint64_t	tag;
	uint64_t	v;
};

enum connlimit_verdict {
	CONNLIMIT_OK,
	CONNLIMIT_TOTAL,	/* server.maxConnections reached */
	CONNLIMIT_CLIENT,	/* server.maxConnectionsPerClient reached */
};

/* The master (or a process without workers): maps nslots slots.  0 or -1 (errno). */
int		 connlimit_map(unsigned nslots);
void		 connlimit_unmap(void);
/* The master: a free slot, cleared and marked in use, or -1 when none is free. */
int		 connlimit_slot_take(void);
/* The master: the slot of a worker that is gone (its counts with it). */
void		 connlimit_slot_free(int slot);

/*
 * The worker: its slot (-1: none was free; a private one then, which the
 * other workers do not see) and its limits (0: none).
 */
void		 connlimit_attach(int slot);
void		 connlimit_set_limits(unsigned max_total, unsigned max_per_client);

/* The key of sa (AF_INET, AF_INET6; IPv4-mapped IPv6 is IPv4).  false: no key. */
bool		 connlimit_key_sa(const struct sockaddr *sa, struct connlimit_key *k);
/* The key of a numeric address ("192.0.2.1", "2001:db8::1"). */
bool		 connlimit_key_str(const char *addr, struct connlimit_key *k);

/*
 * Counts a new connection of k (NULL: an address without a key, counted in
 * the total only).  CONNLIMIT_OK: counted, *client (may be NULL) is the
 * client's count with it; otherwise nothing is counted and *client or
 * *total is the count that was reached (without this one).
 */
enum connlimit_verdict connlimit_acquire(const struct connlimit_key *k,
		    unsigned *client, unsigned *total);
/* A connection connlimit_acquire() counted is closed. */
void		 connlimit_release(const struct connlimit_key *k);
/* The live connections of k across all workers (0 before connlimit_map). */
unsigned	 connlimit_count(const struct connlimit_key *k);
bool		 connlimit_active(void);	/* mapped and attached */

#endif
