/* libFuzzer driver for the ext-1 device IPC descriptor reader. */
#include <stdint.h>
#include <stdlib.h>

#include "wire/pickle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pickle_ipc o;
    int rc = pickle_parse_ipc(data, size, &o);
    if (rc == 0) {
        /* every view must lie in the input or in o's own latin-1 store */
        const struct wire_bin views[] = { o.storage_handle, o.ref_counter_handle, o.event_handle,
                                          o.ipc_handle_reserved };
        for (size_t k = 0; k < sizeof(views) / sizeof(views[0]); k++) {
            const uint8_t *p = views[k].ptr;
            if (!views[k].len)
                continue;
            int in_data = p >= data && p + views[k].len <= data + size;
            int in_store = p >= o.store_ && p + views[k].len <= o.store_ + sizeof(o.store_);
            if (!in_data && !in_store)
                abort();
        }
        if (o.ndim > PICKLE_MAX_DIMS || o.nstride > PICKLE_MAX_DIMS)
            abort();
    }
    return 0;
}
