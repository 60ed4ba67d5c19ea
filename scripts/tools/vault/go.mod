// Wrapper module: builds the Vault server v1.21.1 (the only tag that builds against the published sdk
// here), with the two non-local replace lines of Vault's own go.mod.
module meshca.local/tools/vault

go 1.26.0

tool github.com/hashicorp/vault

require github.com/hashicorp/vault v1.21.1

replace (
	github.com/99designs/keyring => github.com/Jeffail/keyring v1.2.3
	github.com/ma314smith/signedxml v1.1.1 => github.com/moov-io/signedxml v1.1.1
)
