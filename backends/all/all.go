// Package all links every backend into the binary so each registers its
// type name.
package all

import (
	_ "github.com/meshca/broker/backends/awspca"
	_ "github.com/meshca/broker/backends/gcpcas"
	_ "github.com/meshca/broker/backends/localca"
	_ "github.com/meshca/broker/backends/stepca"
	_ "github.com/meshca/broker/backends/vault"
)
