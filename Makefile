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

# The whole issue path in process, and the broker over each backend's direct Sign (real servers).
bench:
	go test -run '^$$' -bench . -benchmem ./broker ./backends/localca
	MESHCA_INTEGRATION=1 go test -run '^$$' -bench BrokerOverBackend -benchtime 500x ./integration
