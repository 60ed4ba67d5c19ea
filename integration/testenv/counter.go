package testenv

import "sync/atomic"

type counter struct{ n atomic.Int64 }

func newCounter() *counter { return &counter{} }

func (c *counter) next() int { return int(c.n.Add(1)) }
