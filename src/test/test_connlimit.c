/*
 * test_connlimit.c -- the shared connection counters: client keys, limits
 * summed over the slots of several workers, a dead worker's slot cleared,
 * a full slot.  The workers are played in one process by attaching to one
 * slot after the other (each writes only its own).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "connlimit.h"
#include "tap.h"

static struct connlimit_key
key(const char *addr)
{
	struct connlimit_key k;

	memset(&k, 0, sizeof(k));
	CHECK(connlimit_key_str(addr, &k));
	return k;
}

static void
test_keys(void)
{
	struct connlimit_key	a = key("192.0.2.1"), b = key("::ffff:192.0.2.1");
	struct connlimit_key	c = key("2001:db8:1:2::25"), d = key("2001:db8:1:2:ffff::1");
	struct connlimit_key	e = key("2001:db8:1:3::25"), f = key("192.0.2.2");
	struct connlimit_key	z = key("::1"), k;
	struct sockaddr_in	sin;

	CHECK(a.tag == 4 && b.tag == 4 && a.v == b.v);	/* IPv4-mapped is IPv4 */
	CHECK(c.tag == 6 && c.v == d.v);		/* one /64 */
	CHECK(c.v != e.v);
	CHECK(a.v != f.v);
	CHECK(z.tag == 6 && z.v == 0);			/* ::/64 is a key too */
	CHECK(!connlimit_key_str("unknown", &k));
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	inet_pton(AF_INET, "192.0.2.1", &sin.sin_addr);
	CHECK(connlimit_key_sa((struct sockaddr *)&sin, &k) && k.tag == a.tag && k.v == a.v);
}

static void
test_workers(void)
{
	struct connlimit_key	a = key("192.0.2.1"), b = key("198.51.100.7");
	unsigned		client, total;
	int			s0, s1;

	CHECK(connlimit_map(4) == 0);
	CHECK((s0 = connlimit_slot_take()) == 0);
	CHECK((s1 = connlimit_slot_take()) == 1);
	connlimit_set_limits(4, 2);

	connlimit_attach(s0);
	CHECK(connlimit_acquire(&a, &client, &total) == CONNLIMIT_OK && client == 1);
	connlimit_attach(s1);
	CHECK(connlimit_acquire(&a, &client, &total) == CONNLIMIT_OK && client == 2);
	/* the other worker's count is seen: the third is refused, and not counted */
	CHECK(connlimit_acquire(&a, &client, &total) == CONNLIMIT_CLIENT && client == 2);
	CHECK(connlimit_count(&a) == 2);
	CHECK(connlimit_acquire(&b, &client, &total) == CONNLIMIT_OK && total == 3);
	CHECK(connlimit_acquire(&b, &client, &total) == CONNLIMIT_OK && total == 4);
	CHECK(connlimit_acquire(NULL, &client, &total) == CONNLIMIT_TOTAL && total == 4);
	connlimit_release(&b);
	CHECK(connlimit_acquire(NULL, NULL, &total) == CONNLIMIT_OK && total == 4);
	connlimit_release(NULL);

	/* worker 0 dies holding a's first connection: its slot goes with it */
	connlimit_slot_free(s0);
	CHECK(connlimit_count(&a) == 1);
	CHECK(connlimit_acquire(&a, &client, &total) == CONNLIMIT_OK && client == 2);
	/* a new worker in the slot starts from nothing */
	CHECK(connlimit_slot_take() == 0);
	connlimit_attach(0);
	CHECK(connlimit_count(&a) == 2);
	connlimit_attach(s1);
	connlimit_release(&a);
	connlimit_release(&a);
	CHECK(connlimit_count(&a) == 0);
	/* an entry freed is reused by another key, and the first is still found */
	CHECK(connlimit_acquire(&a, &client, NULL) == CONNLIMIT_OK && client == 1);
	connlimit_unmap();
}

static void
test_full(void)
{
	struct connlimit_key	k = { 4, 0 };
	unsigned		client, total, n = 0, missed = 0, refused = 0;

	CHECK(connlimit_map(1) == 0);
	connlimit_attach(connlimit_slot_take());
	connlimit_set_limits(0, 1);
	/* more distinct clients than a slot holds: the rest count in the total only */
	for (uint64_t i = 1; i <= CONNLIMIT_ENTRIES + 100; i++) {
		k.v = i;
		if (connlimit_acquire(&k, &client, &total) != CONNLIMIT_OK)
			refused++;
		else if (client == 0)
			missed++;
		n++;
	}
	CHECK(refused == 0);
	CHECK(total == n);
	CHECK(missed >= 100);
	/* a client with an entry is still limited */
	k.v = 1;
	CHECK(connlimit_acquire(&k, &client, &total) == CONNLIMIT_CLIENT);
	connlimit_unmap();
	/* not mapped: nothing is counted, nothing refused */
	CHECK(connlimit_acquire(&k, &client, &total) == CONNLIMIT_OK);
	CHECK(connlimit_count(&k) == 0);
}

static void
test_no_slot(void)
{
	struct connlimit_key	a = key("192.0.2.1");
	unsigned		client;

	CHECK(connlimit_map(1) == 0);
	CHECK(connlimit_slot_take() == 0);
	CHECK(connlimit_slot_take() == -1);	/* every slot taken */
	connlimit_set_limits(0, 2);
	connlimit_attach(0);
	CHECK(connlimit_acquire(&a, &client, NULL) == CONNLIMIT_OK && client == 1);
	/* a worker without a slot counts privately, and still sees the others */
	connlimit_attach(-1);
	CHECK(connlimit_acquire(&a, &client, NULL) == CONNLIMIT_OK && client == 2);
	CHECK(connlimit_acquire(&a, &client, NULL) == CONNLIMIT_CLIENT);
	connlimit_release(&a);
	CHECK(connlimit_count(&a) == 1);
	connlimit_unmap();
}

int
main(void)
{
	test_keys();
	test_workers();
	test_full();
	test_no_slot();
	return tap_done();
}
