/* The cross-instance notifications of the scouts module (private to src/scouts).
 *
 * Instances tell each other what happened through NOTIFY payloads on the channel
 * SCOUTS_CHANNEL. Every sender goes through the SQL function steward_notify
 * (migrations/0009_notify.sql), which joins a kind letter and its fields with '|';
 * scouts_notify_parse is the one place that reads them. The payloads are a format
 * between instances, possibly of different versions during a rolling upgrade: a kind's
 * fields never change; a new meaning gets a new kind, which older instances ignore.
 *
 *   q|user                             something was queued (or queued again) for user
 *   a|instance|proposal|device|user    device acked proposal on instance
 *   d|device|user                      the device was deleted
 *   u|user                             the user was erased
 *
 * The user id is always the last field and keeps everything after the separator before
 * it, so an id containing '|' arrives whole; the other fields never contain one. */
#ifndef STEWARD_SCOUTS_NOTIFY_H
#define STEWARD_SCOUTS_NOTIFY_H

/* The channel; steward_notify names the same one. */
#define SCOUTS_CHANNEL "steward_scouts"

enum scouts_notify_kind {
    SCOUTS_NOTIFY_QUEUED = 'q',
    SCOUTS_NOTIFY_ACKED = 'a',
    SCOUTS_NOTIFY_DEVICE_GONE = 'd',
    SCOUTS_NOTIFY_USER_ERASED = 'u',
};

/* The same kinds as SQL literals, for the statements that call steward_notify (a unit
 * test checks that they agree with the enum). */
#define SCOUTS_NOTIFY_SQL_QUEUED "'q'"
#define SCOUTS_NOTIFY_SQL_ACKED "'a'"
#define SCOUTS_NOTIFY_SQL_DEVICE_GONE "'d'"
#define SCOUTS_NOTIFY_SQL_USER_ERASED "'u'"

/* PostgreSQL refuses payloads of 8000 bytes or more; a longer one is malformed. */
#define SCOUTS_NOTIFY_MAX 8000

/* A parsed payload. The fields point into buf; those the kind lacks are NULL. */
struct scouts_notify {
    enum scouts_notify_kind kind;
    const char *instance; /* ACKED: the instance that took the ack */
    const char *proposal; /* ACKED */
    const char *device;   /* ACKED (the acking device), DEVICE_GONE */
    const char *user;     /* every kind */
    char buf[SCOUTS_NOTIFY_MAX + 1];
};

/* Parses payload into *n. Returns 0, or -1 when payload is not a notification of a known
 * kind with every one of its fields present and not empty (*n is unusable then). */
int scouts_notify_parse(const char *payload, struct scouts_notify *n);

#endif
