package s3

// IgnoreConditionForTest makes b behave as if its server ignored
// If-None-Match, to test the check-before-write fallback.
func IgnoreConditionForTest(b *Backend) { b.ignoreCondition = true }

// ConditionalForTest reports what the probe found.
func ConditionalForTest(b *Backend) (known, conditional bool) {
	b.condMu.Lock()
	defer b.condMu.Unlock()
	return b.condKnown, b.conditional
}
