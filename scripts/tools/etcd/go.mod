// Wrapper module: fallback build of etcd v3.6.16 when Debian's etcd-server cannot be installed.
module meshca.local/tools/etcd

go 1.26.0

tool go.etcd.io/etcd/server/v3

require go.etcd.io/etcd/server/v3 v3.6.16
