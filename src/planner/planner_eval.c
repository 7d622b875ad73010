/* Pure planner rules; see planner_int.h. */
#include "planner_int.h"

#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "steward/crypto.h"

static const char *const action_names[PLANNER_NACTIONS] = {"comment", "edit", "thread"};
static const char *const tier_names[PLANNER_NACTIONS] = {"tier_1", "tier_2", "tier_3"};

size_t planner_eval_window(const struct planner_point *pts, size_t n, int64_t now_us,
                           int64_t window_us, struct planner_point *first,
                           struct planner_point *last)
{
    int64_t from = now_us - window_us;
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        if (pts[i].ts_us < from)
            continue;
        if (count == 0 || pts[i].ts_us < first->ts_us)
            *first = pts[i];
        if (count == 0 || pts[i].ts_us >= last->ts_us)
            *last = pts[i];
        count++;
    }
    return count;
}

double planner_stagnation_score(long long imp_delta, long long eng_delta)
{
    double rate = imp_delta > 0 ? (double)eng_delta / (double)imp_delta : 0.0;
    double scaled = rate * 20.0;
    return 1.0 - (scaled < 1.0 ? scaled : 1.0);
}

enum planner_action planner_action_for_score(double score)
{
    if (score >= 0.8)
        return PLANNER_THREAD;
    if (score >= 0.55)
        return PLANNER_EDIT;
    return PLANNER_COMMENT;
}

void planner_eval_extremes(size_t count, const struct planner_point *first,
                           const struct planner_point *last, long long min_samples,
                           struct planner_eval *out)
{
    memset(out, 0, sizeof(*out));
    out->sample_count = count;
    if ((long long)count < min_samples || count == 0)
        return;
    out->sufficient = true;
    long long di = last->impressions - first->impressions;
    long long de = last->engagements - first->engagements;
    out->imp_delta = di > 0 ? di : 0;
    out->eng_delta = de > 0 ? de : 0;
    out->eng_rate = out->imp_delta > 0 ? (double)out->eng_delta / (double)out->imp_delta : 0.0;
    out->stagnation_score = planner_stagnation_score(out->imp_delta, out->eng_delta);
    out->action = planner_action_for_score(out->stagnation_score);
}

void planner_evaluate(const struct planner_point *pts, size_t n, int64_t now_us,
                      long long window_minutes, long long min_samples, struct planner_eval *out)
{
    struct planner_point first = {0}, last = {0};
    size_t count = planner_eval_window(pts, n, now_us, (int64_t)window_minutes * 60 * 1000000,
                                       &first, &last);
    planner_eval_extremes(count, &first, &last, min_samples, out);
}

const char *planner_action_name(enum planner_action a)
{
    return (unsigned)a < PLANNER_NACTIONS ? action_names[a] : "comment";
}

const char *planner_tier_name(enum planner_action a)
{
    return (unsigned)a < PLANNER_NACTIONS ? tier_names[a] : "tier_1";
}

static int parse_name(const char *s, const char *const *names, enum planner_action *out)
{
    for (int i = 0; s && i < PLANNER_NACTIONS; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (enum planner_action)i;
            return 0;
        }
    }
    return -1;
}

int planner_action_parse(const char *s, enum planner_action *out)
{
    return parse_name(s, action_names, out);
}

int planner_tier_parse(const char *s, enum planner_action *out)
{
    return parse_name(s, tier_names, out);
}

int planner_idempotency_key(const char *post_id, enum planner_action a, char *out)
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    char tail[32];
    int tlen = snprintf(tail, sizeof(tail), ":%s:%s", planner_action_name(a),
                        planner_tier_name(a));
    size_t plen = strlen(post_id);
    char buf[1024];
    out[0] = '\0';
    if (plen + (size_t)tlen <= sizeof(buf)) {
        memcpy(buf, post_id, plen);
        memcpy(buf + plen, tail, (size_t)tlen);
        crypto_sha256(buf, plen + (size_t)tlen, digest);
    } else {
        /* longer ids are hashed in two pieces rather than copied */
        unsigned int dlen = 0;
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
                  EVP_DigestUpdate(ctx, post_id, plen) == 1 &&
                  EVP_DigestUpdate(ctx, tail, (size_t)tlen) == 1 &&
                  EVP_DigestFinal_ex(ctx, digest, &dlen) == 1 && dlen == 32;
        EVP_MD_CTX_free(ctx);
        if (!ok)
            return -1;
    }
    char hex[33];
    crypto_hex(digest, 16, hex);
    snprintf(out, PLANNER_KEY_LEN, "sheal_%s", hex);
    return 0;
}

bool planner_is_transient(const char *code)
{
    static const char *const transient[] = {"timeout", "rate_limit", "service_unavailable",
                                            "network_error"};
    if (!code)
        return false;
    for (size_t i = 0; i < sizeof(transient) / sizeof(transient[0]); i++)
        if (strcmp(code, transient[i]) == 0)
            return true;
    return false;
}

bool planner_should_retry(const char *status, const char *error_code, long long attempts,
                          long long max_attempts)
{
    return status && strcmp(status, "failed") == 0 && planner_is_transient(error_code) &&
           attempts < max_attempts;
}

long long planner_backoff_seconds(const char *key, long long attempts)
{
    if (attempts < 1)
        attempts = 1;
    long long ceiling = PLANNER_BACKOFF_BASE_S;
    for (long long i = 1; i < attempts && ceiling < PLANNER_BACKOFF_CAP_S; i++)
        ceiling *= 2;
    if (ceiling > PLANNER_BACKOFF_CAP_S)
        ceiling = PLANNER_BACKOFF_CAP_S;
    char seed[96];
    int len = snprintf(seed, sizeof(seed), "%s:%lld", key ? key : "", attempts);
    if (len < 0)
        len = 0;
    if ((size_t)len >= sizeof(seed))
        len = (int)sizeof(seed) - 1;
    unsigned char digest[32];
    crypto_sha256(seed, (size_t)len, digest);
    uint64_t j = 0;
    for (int i = 0; i < 8; i++)
        j = (j << 8) | digest[i];
    long long half = ceiling / 2;
    return half + (long long)(j % (uint64_t)(ceiling - half + 1));
}
