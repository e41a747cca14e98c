# libFuzzer targets for the wire decoders. Invoked by the top Makefile as
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
TARGETS := request pickle

.PHONY: all build run $(TARGETS:%=run-%)
all: run
build: $(TARGETS:%=$(OUT)/fuzz_%)
run: $(TARGETS:%=run-%)

$(OUT)/fuzz_%: tests/fuzz/fuzz_%.c $(WIRE_SRCS) $(wildcard src/wire/*.h)
	@mkdir -p $(OUT)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(WIRE_SRCS)

# make ignores pattern rules for phony targets, so each run rule is stamped out.
define RUN_RULE
run-$(1): $(OUT)/fuzz_$(1)
	@rm -rf $(OUT)/run-$(1) && mkdir -p $(OUT)/run-$(1)/corpus $(OUT)/run-$(1)/artifacts
	@cp tests/fuzz/corpus/$(1)/* $(OUT)/run-$(1)/corpus/ 2>/dev/null || true
	./$(OUT)/fuzz_$(1) -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
		-dict=tests/fuzz/$(1).dict -print_final_stats=1 \
		-artifact_prefix=$(OUT)/run-$(1)/artifacts/ $(OUT)/run-$(1)/corpus
endef
$(foreach t,$(TARGETS),$(eval $(call RUN_RULE,$(t))))
