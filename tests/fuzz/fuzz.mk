# libFuzzer targets: the wire decoders (request, pickle) and the engine with
# L1 driven by decoded request sequences (engine). Invoked by the top Makefile as
# `$(MAKE) -f tests/fuzz/fuzz.mk`; FUZZ_SECONDS per target (default 600).
# Builds from the sources directly (never from build/) into build-fuzz/ and
# fuzzes a copy of each seed corpus, so the committed corpus never changes.
# Exits non-zero when a target finds a crash, leak or sanitizer report.

FUZZ_SECONDS ?= 600
FUZZ_CC ?= clang
OUT := build-fuzz
FUZZ_CFLAGS := -std=gnu11 -g -O1 -fno-omit-frame-pointer \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-Isrc -Iinclude
WIRE_SRCS := $(wildcard src/wire/*.c)
# fuzz_engine drives the whole server library (engine, L1, handlers), so it
# builds every module the server links, with the same libraries.
PKGS := libzmq jansson libmicrohttpd hiredis libxxhash msgpack
SERVER_SRCS := $(filter-out src/server/main.c,$(foreach m,server http plugin engine transfer l2 wire l1 metrics util,$(wildcard src/$(m)/*.c)))
TARGETS := request pickle engine

.PHONY: all build run $(TARGETS:%=run-%)
all: run
build: $(TARGETS:%=$(OUT)/fuzz_%)
run: $(TARGETS:%=run-%)

# The dashboard page the HTTP module serves, embedded as the top Makefile does.
GEN_SRCS := $(OUT)/gen/dashboard_html.c
$(OUT)/gen/dashboard_html.c: src/http/dashboard.html mk/embed.sh
	@mkdir -p $(dir $@)
	sh mk/embed.sh src/http/dashboard.html lmcd_dashboard_html > $@.tmp && mv $@.tmp $@

$(OUT)/fuzz_engine: tests/fuzz/fuzz_engine.c tests/fuzz/fuzz_frames.h $(SERVER_SRCS) $(GEN_SRCS) $(wildcard src/*/*.h)
	@mkdir -p $(OUT)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -D_GNU_SOURCE -pthread $(shell pkg-config --cflags $(PKGS)) -o $@ $< $(SERVER_SRCS) \
		$(GEN_SRCS) $(shell pkg-config --libs $(PKGS)) -lm

$(OUT)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_frames.h $(WIRE_SRCS) $(wildcard src/wire/*.h)
	@mkdir -p $(OUT)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(WIRE_SRCS)

# make ignores pattern rules for phony targets, so each run rule is stamped out.
define RUN_RULE
run-$(1): $(OUT)/fuzz_$(1)
	@rm -rf $(OUT)/run-$(1) && mkdir -p $(OUT)/run-$(1)/corpus $(OUT)/run-$(1)/artifacts
	@cp tests/fuzz/corpus/$(1)/* $(OUT)/run-$(1)/corpus/ 2>/dev/null || true
	./$(OUT)/fuzz_$(1) -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
		-dict=tests/fuzz/$(if $(filter engine,$(1)),request,$(1)).dict -print_final_stats=1 \
		-artifact_prefix=$(OUT)/run-$(1)/artifacts/ $(OUT)/run-$(1)/corpus
endef
$(foreach t,$(TARGETS),$(eval $(call RUN_RULE,$(t))))
