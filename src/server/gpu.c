/*
 * gpu: opening and closing the server's GPU transfer backend (transfer.h).
 * server_init calls srv_gpu_open before any pool thread starts, and
 * server_destroy calls srv_gpu_close after they stopped, so handlers read
 * s->gpu / s->gpu_ops without a lock. Without a backend, s->gpu_why says
 * why, for the one log line per worker that dispatch.c writes.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "server/server.h"
#include "transfer/transfer.h"
#include "util/log.h"

void srv_gpu_open(struct server *s)
{
    const char *mode = s->cfg->mp.supported_transfer_mode ? s->cfg->mp.supported_transfer_mode : "auto";
    const struct transfer_ops *ops = transfer_cuda();
    if (!strcmp(mode, "engine_driven")) {
        snprintf(s->gpu_why, sizeof(s->gpu_why), "--supported-transfer-mode engine_driven");
        return;
    }
    if (!ops) {
        snprintf(s->gpu_why, sizeof(s->gpu_why), "this lmcd was built without nvcc (no CUDA backend)");
        log_info("GPU path: none in this build; serving the engine-driven path only");
        return;
    }
    struct transfer_opts o = {
        .null_block_id = s->cfg->mp.null_block_id,
        .isolated_ipc = s->cfg->mp.isolated_ipc,
    };
    char why[200] = "";
    int rc = ops->open(&o, &s->gpu, why, sizeof(why));
    if (rc) {
        s->gpu = NULL;
        snprintf(s->gpu_why, sizeof(s->gpu_why), "%s", why[0] ? why : strerror(-rc));
        log_warn("GPU path unavailable (%s): GPU workers' requests get the no-CUDA answer, engine-driven workers "
                 "are served", s->gpu_why);
        return;
    }
    s->gpu_ops = ops;
    log_info("GPU path: CUDA driver loaded (mode %s); the copy path into L1 is not wired yet, so STORE and "
             "RETRIEVE answer (event, false)", mode);
}

void srv_gpu_close(struct server *s)
{
    if (s->gpu && s->gpu_ops)
        s->gpu_ops->close(s->gpu);
    s->gpu = NULL;
    s->gpu_ops = NULL;
}
