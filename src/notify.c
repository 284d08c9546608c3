/*
 * notify.c -- sd_notify for Type=notify services (notify.h).
 *
 * Owns the pid allowed to notify.  Each message is one sd_notify call of
 * libsystemd, which speaks systemd's datagram protocol on NOTIFY_SOCKET.
 */
#include <sys/types.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "log.h"
#include "notify.h"

static pid_t	notify_pid;

void
notify_init(void)
{
	notify_pid = getpid();
}

static void
notify_send(const char *msg)
{
	int	rc;

	if (notify_pid == 0 || getpid() != notify_pid)
		return;		/* a worker: the master speaks for it */
	if ((rc = sd_notify(0, msg)) < 0)
		log_warn(0, "sd_notify: cannot tell systemd: %s", strerror(-rc));
}

void
notify_ready(const char *status)
{
	char	msg[256];

	snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", status != NULL ? status : "serving");
	notify_send(msg);
}

/* systemd 253's Type=notify-reload wants the monotonic time of the reload's start */
void
notify_reloading(void)
{
	struct timespec	ts;
	char		msg[128];

	clock_gettime(CLOCK_MONOTONIC, &ts);
	snprintf(msg, sizeof(msg), "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=%llu",
	    (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
	notify_send(msg);
}

void
notify_stopping(void)
{
	notify_send("STOPPING=1\nSTATUS=stopping");
}
