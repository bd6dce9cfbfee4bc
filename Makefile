# diskimg — build, test, benchmark, fuzz.
GO       ?= go
BIN      := bin/diskimg
VERSION  := $(shell git describe --always --dirty 2>/dev/null)
LDFLAGS  := -X main.buildVersion=$(VERSION)
PREFIX   ?= /usr/local
FUZZTIME ?= 60s
# Go's fuzzer otherwise spends up to a minute shrinking each new input,
# running nothing meanwhile (0 execs/s for most of a short run).
FUZZMINIMIZE ?= 2s

.PHONY: all build install setup demo test vet fmt-check no-outside-data bench bench-go fuzz clean

all: build

# Static (no cgo): without the dynamic loader a run starts about 1.5 ms
# sooner, which is a tenth of converting an empty image. The tag leaves out
# urfave/cli's man page and markdown generators, which we do not use: their
# markdown library builds large maps at start-up (2-3 ms a run).
TAGS     := urfave_cli_no_docs
build:
	CGO_ENABLED=0 $(GO) build -tags '$(TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/diskimg

# Installs bin/diskimg as $(DESTDIR)$(PREFIX)/bin/diskimg (PREFIX=$HOME/.local
# for a user install).
install: build
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/diskimg

# The main job on the bundled image: what it is, what is inside, whether
# Huawei Cloud IMS takes it, and a conversion to VHD for upload (verified).
demo: build
	$(BIN) info testdata/demo.qcow2
	$(BIN) inspect testdata/demo.qcow2
	$(BIN) plan --cloud huawei-ims testdata/demo.qcow2
	$(BIN) convert -O vpc --force --verify --checksum sha256 testdata/demo.qcow2 bin/demo.vhd
	$(BIN) info bin/demo.vhd

# Installs the Debian packages the tests use (qemu-utils, gdisk, mkfs tools)
# when missing, and builds the S3 server the object-storage tests start
# (SeaweedFS, once, into ~/.cache/diskimg).
setup:
	.ci/setup-deps
	GO=$(GO) .ci/setup-seaweedfs >/dev/null

# Everything CI runs: formatting, vet, test data inside the repository,
# every test (qemu-img required under CI=true).
test: setup fmt-check vet no-outside-data
	$(GO) test -count=1 -timeout 25m ./...

vet:
	$(GO) vet ./...

# A clone has nothing beside it: tests read only what the repository holds.
no-outside-data:
	@if grep -rln --include='*.go' -e '\.\./shared' -e '/work/shared' .; then \
		echo "the Go files above read test data outside the repository: put it in testdata/ (see testdata/README.md)"; exit 1; fi

fmt-check:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# The quick diskimg-vs-qemu-img benchmark (a few minutes); bench-go runs the
# Go benchmarks of the inner loops (reading extents, zero detection,
# compression) with -benchmem.
bench: build
	$(BIN) bench --quick

bench-go:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 200ms ./format/... ./convert/...

# Runs every fuzz target for FUZZTIME each (make fuzz FUZZTIME=5m), FUZZJOBS
# targets side by side with FUZZPARALLEL workers each; FUZZSKIP is a regex
# of "package target" lines to leave out. See .ci/fuzz.
FUZZJOBS     ?= 1
FUZZPARALLEL ?= $(shell nproc)
FUZZSKIP     ?= ^$$
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) FUZZMINIMIZE=$(FUZZMINIMIZE) FUZZJOBS=$(FUZZJOBS) FUZZPARALLEL=$(FUZZPARALLEL) FUZZSKIP='$(FUZZSKIP)' .ci/fuzz

clean:
	rm -rf bin
