package restore

// SetAfterPlan makes Run call f right after planning (tests change the
// repository there, as if it changed under a running restore).
func SetAfterPlan(o *Options, f func()) { o.afterPlan = f }
