/* Fuzzes the WebSocket frame handler: one text frame dispatched on a session that has
 * no socket, before hello (first byte even) or after (odd), through the real dispatch
 * (parse, bad_frame / unauthorized / unknown_type) and the real scouts handlers
 * (device_hello, scout_proposal_ack). A hello that passes validation goes to the
 * database, which does not exist here, and is refused there. */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "steward/ws.h"
#include "ws/ws_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_world *w = fuzz_world_get(true);
    if (size < 1 || size > WS_MAX_FRAME + 1)
        return 0;
    bool authed = data[0] & 1;
    uint64_t sid = 1 + (data[0] >> 1);
    ws_dispatch_frame(w->ws, sid, authed, (const char *)data + 1, size - 1);
    return 0;
}
