# Everyday targets. The README's two commands are `make demo` and `make test-all`.
.PHONY: demo test test-all generate lint bench tools

demo:
	go run ./cmd/broker demo

# Unit tests only: seconds. Tests needing a real component skip when it is not installed.
test:
	go test ./...

# The whole suite with the real components (builds them once into ~/.cache/meshca-tools).
test-all:
	scripts/test.sh

tools:
	scripts/install-tools.sh

# Regenerate the gRPC code with the generators pinned in tools/go.mod.
generate:
	go tool -modfile=tools/go.mod buf generate

lint:
	gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')
	go vet ./...
	go tool -modfile=tools/go.mod buf lint

bench:
	go test -run '^$$' -bench . -benchmem ./server ./backends/localca
