/* Error codes shared by every module: 0 is success, failures are negative. */
#ifndef STEWARD_ERR_H
#define STEWARD_ERR_H

enum st_err {
    ST_OK = 0,
    ST_ENOTFOUND = -2,  /* no such resource: 404 */
    ST_ECONFLICT = -3,  /* state conflict: 409 */
    ST_EUNAVAIL = -4,   /* database unreachable, pool timeout, statement timeout: 503 */
    ST_EINTERNAL = -5,  /* a bug or an unexpected database error: 500, logged */
    ST_EINVALID = -6,   /* input breaks the schema: 422 */
    ST_EDISABLED = -7,  /* feature switched off by configuration */
    ST_ELIMIT = -8,     /* rate limited: 429 */
    ST_ENOMEM = -9,     /* allocation failed: 500 */
    ST_EFORBIDDEN = -10 /* credentials lack the right: 403 */
};

/* Short lowercase name of an error code, for logs. Never NULL. */
const char *st_strerror(int err);

#endif
