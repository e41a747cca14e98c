# Benchmarks: every bench/bench_*.c is one program, linked with
# bench/common.c against $(BUILD)/libserver.a and run in turn (with
# LMCD_BUILD=$(BUILD), so the ones that start lmcd start that build's). Called by the top Makefile's
# `make bench` as: $(MAKE) -s -f bench/bench.mk BUILD=$(BUILD)
# Benchmarks print ratios against a baseline measured in the same run and
# never fail on speed; a non-zero exit means the program itself broke.

BUILD ?= build
CC ?= cc
PKGS := libzmq jansson libmicrohttpd hiredis libxxhash msgpack

# The sanitizer builds' libraries need the same runtime at link time.
ifeq ($(BUILD),build-asan)
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined
else ifeq ($(BUILD),build-tsan)
SANFLAGS := -fsanitize=thread
else
SANFLAGS :=
endif

BENCH_CFLAGS := -std=gnu11 -D_GNU_SOURCE -O2 -g -fno-omit-frame-pointer -Wall -Wextra -Werror -Wshadow \
	-Wstrict-prototypes -Wmissing-prototypes -pthread -Isrc -Iinclude \
	$(shell pkg-config --cflags $(PKGS)) $(SANFLAGS) $(EXTRA_CFLAGS)
BENCH_LDLIBS := $(shell pkg-config --libs $(PKGS)) -lm

BENCH_SRCS := $(wildcard bench/bench_*.c)
BENCH_BINS := $(BENCH_SRCS:bench/%.c=$(BUILD)/bench/%)

# QUICK=1: every bench shrinks to seconds (CI). Each bench appends its
# figures to $(BENCH_OUT)/results.jsonl; bench/report.py prints the table and
# writes results.json and the PNG plots (gnuplot) there.
BENCH_OUT ?= bench/out
QUICK ?=

.PHONY: bench
bench: $(BENCH_BINS)
	@mkdir -p $(BENCH_OUT) && rm -f $(BENCH_OUT)/results.jsonl
	@for b in $(BENCH_BINS); do echo "== $$b"; t0=$$(date +%s); LMCD_BUILD=$(BUILD) LMCD_BENCH_OUT=$(BENCH_OUT) \
		LMCD_BENCH_QUICK=$(QUICK) ./$$b $(BENCH_ARGS) || exit 1; echo "   ($$(( $$(date +%s) - t0 )) s)"; done
	@/usr/bin/python3 bench/report.py $(BENCH_OUT)

# The official BLAKE3 C library, as bench_hash's baseline: Debian ships its
# sources in librust-blake3-dev (the Rust crate carries them); built here with
# the official README's command (its x86-64 assembly, runtime dispatch), and
# linked into bench_hash only. Without the package bench_hash says so and
# reports that figure as missing.
B3_OFFICIAL_DIR := $(lastword $(sort $(wildcard /usr/share/cargo/registry/blake3-*/c)))
ifneq ($(B3_OFFICIAL_DIR),)
B3_OFFICIAL_SRCS := $(addprefix $(B3_OFFICIAL_DIR)/,blake3.c blake3_dispatch.c blake3_portable.c)
B3_OFFICIAL_ASM := $(addprefix $(B3_OFFICIAL_DIR)/,blake3_sse2_x86-64_unix.S blake3_sse41_x86-64_unix.S \
	blake3_avx2_x86-64_unix.S blake3_avx512_x86-64_unix.S)
B3_OFFICIAL_LIB := $(BUILD)/bench/blake3-official/libblake3.a

$(B3_OFFICIAL_LIB): $(B3_OFFICIAL_SRCS) $(B3_OFFICIAL_ASM)
	@mkdir -p $(dir $@)
	cd $(dir $@) && $(CC) -O3 -c $(B3_OFFICIAL_SRCS) $(B3_OFFICIAL_ASM) && $(AR) rcs libblake3.a *.o

$(BUILD)/bench/bench_hash: $(B3_OFFICIAL_LIB)
$(BUILD)/bench/bench_hash: BENCH_EXTRA = -DLMCD_BENCH_B3_OFFICIAL -I$(B3_OFFICIAL_DIR) $(B3_OFFICIAL_LIB)
endif

$(BUILD)/bench/%: bench/%.c bench/common.c bench/common.h $(BUILD)/libserver.a $(BUILD)/liblmcd.a
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -o $@ $< bench/common.c $(BUILD)/libserver.a $(BUILD)/liblmcd.a $(BENCH_EXTRA) \
		-pthread $(SANFLAGS) $(BENCH_LDLIBS)
