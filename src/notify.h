/*
 * notify.h -- telling systemd (sd_notify, Type=notify) where the server
 * stands: READY=1 once every worker of the first generation accepts (when
 * the ready file is written), RELOADING=1 with MONOTONIC_USEC on SIGHUP and
 * READY=1 again once the new generation serves (or the reload failed and
 * the old one serves on), STOPPING=1 on SIGTERM/SIGINT.
 *
 * Only the process that called notify_init() (the master, or the single
 * process of --workers 0) ever sends: workers inherit NOTIFY_SOCKET but
 * systemd would refuse their messages (NotifyAccess=main).  Without
 * NOTIFY_SOCKET (not under systemd) each call costs a getenv.
 */
#ifndef LUASMTPD_NOTIFY_H
#define LUASMTPD_NOTIFY_H

void	notify_init(void);
void	notify_ready(const char *status);	/* status: STATUS=, may be NULL */
void	notify_reloading(void);
void	notify_stopping(void);

#endif
