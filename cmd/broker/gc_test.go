package main

import "testing"

func TestParseCgroupLimit(t *testing.T) {
	for _, tc := range []struct {
		in    string
		want  int64
		limit bool
	}{
		{"536870912\n", 512 << 20, true},
		{"max\n", 0, false},                 // cgroup v2 without a limit
		{"9223372036854771712\n", 0, false}, // cgroup v1 without a limit
		{"", 0, false},
		{"-1", 0, false},
	} {
		got, ok := parseCgroupLimit([]byte(tc.in))
		if got != tc.want || ok != tc.limit {
			t.Errorf("parseCgroupLimit(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.limit)
		}
	}
}
