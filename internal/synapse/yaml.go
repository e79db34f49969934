package synapse

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Synapse reads its config with PyYAML's safe_load. The helpers here walk
// go.yaml.in/yaml/v3 nodes (which keep line numbers for error messages) the
// way PyYAML builds Python values: a repeated key keeps its last value, merge
// keys (<<) are honoured, and plain yes/no/on/off are booleans (YAML 1.1).

// entry is a value and where it was read from.
type entry struct {
	node *yaml.Node // alias-resolved
	file string
}

// keyValue is one key of a mapping, in document order.
type keyValue struct {
	key   string
	value *yaml.Node
}

// syntaxLine matches go.yaml.in/yaml/v3's "yaml: line N: problem" messages.
var syntaxLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// readYAML parses one config file. It returns nil, nil for an empty file (or
// one that holds only comments or null), which Synapse ignores.
func readYAML(path string) (*yaml.Node, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		kind := ErrUnreadable
		if errors.Is(err, os.ErrNotExist) {
			kind = ErrNotFound
		}
		return nil, &Error{Kind: kind, File: path, Problem: "cannot read the file: " + causeText(err),
			Fix: "check that the user running synbak can read it", Err: err}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, syntaxError(path, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, syntaxError(path, err)
		}
		return nil, &Error{Kind: ErrSyntax, File: path, Line: extra.Line,
			Problem: "the file holds more than one YAML document (a second ---)",
			Fix:     "Synapse reads a single document per file: remove the extra --- or move it to its own file"}
	}
	top := deref(&doc)
	if top.Kind == yaml.DocumentNode {
		if len(top.Content) == 0 {
			return nil, nil
		}
		top = deref(top.Content[0])
	}
	if top.Kind == yaml.ScalarNode && scalarTag(top) == "!!null" {
		return nil, nil
	}
	if top.Kind != yaml.MappingNode {
		return nil, &Error{Kind: ErrType, File: path, Line: top.Line,
			Problem: "the top level is " + describe(top) + ", not a mapping of settings (key: value)",
			Fix:     "this does not look like a Synapse config file: check the path given to --homeserver / synapse.config"}
	}
	return top, nil
}

// syntaxError turns a YAML parse error into "file:line: problem".
func syntaxError(path string, err error) *Error {
	msg := err.Error()
	line := 0
	if m := syntaxLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	return &Error{Kind: ErrSyntax, File: path, Line: line, Problem: "invalid YAML: " + msg,
		Fix: "fix the file (Synapse cannot read it either)", Err: err}
}

// causeText is the OS error without the path, which the message already names.
func causeText(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// deref follows aliases.
func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// entries lists a mapping's keys in order, merged mappings (<<) first so that
// the mapping's own keys win, as in PyYAML. Later keys win over earlier ones
// when the caller builds a map from the list.
func entries(n *yaml.Node) []keyValue {
	return entriesDepth(n, 0)
}

func entriesDepth(n *yaml.Node, depth int) []keyValue {
	n = deref(n)
	if n == nil || n.Kind != yaml.MappingNode || depth > 32 {
		return nil
	}
	var merged, own []keyValue
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			continue // a complex key: never one of Synapse's settings
		}
		if k.ShortTag() == "!!merge" {
			v = deref(v)
			switch v.Kind {
			case yaml.MappingNode:
				merged = append(merged, entriesDepth(v, depth+1)...)
			case yaml.SequenceNode:
				// PyYAML: the first mapping of the list has the highest precedence.
				for j := len(v.Content) - 1; j >= 0; j-- {
					merged = append(merged, entriesDepth(v.Content[j], depth+1)...)
				}
			}
			continue
		}
		own = append(own, keyValue{key: k.Value, value: deref(v)})
	}
	return append(merged, own...)
}

// lookup returns the last value of key in mapping n, or nil.
func lookup(n *yaml.Node, key string) *yaml.Node {
	var found *yaml.Node
	for _, kv := range entries(n) {
		if kv.key == key {
			found = kv.value
		}
	}
	return found
}

// unique keeps the last value of every key, in the order of each key's first
// appearance (Python's dict keeps the position of the first insertion).
func unique(kvs []keyValue) []keyValue {
	pos := map[string]int{}
	var out []keyValue
	for _, kv := range kvs {
		if i, ok := pos[kv.key]; ok {
			out[i].value = kv.value
			continue
		}
		pos[kv.key] = len(out)
		out = append(out, kv)
	}
	return out
}

// yaml11Bools are the plain scalars PyYAML reads as booleans.
var yaml11Bools = map[string]bool{
	"yes": true, "Yes": true, "YES": true, "true": true, "True": true, "TRUE": true, "on": true, "On": true, "ON": true,
	"no": false, "No": false, "NO": false, "false": false, "False": false, "FALSE": false, "off": false, "Off": false, "OFF": false,
}

// scalarTag resolves a scalar's type as PyYAML would: the YAML 1.1 booleans
// yes/no/on/off are booleans there even though YAML 1.2 calls them strings.
func scalarTag(n *yaml.Node) string {
	n = deref(n)
	if n == nil {
		return "!!null"
	}
	if n.Kind != yaml.ScalarNode {
		return ""
	}
	tag := n.ShortTag()
	if tag == "!!str" && n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle|yaml.TaggedStyle) == 0 {
		if _, ok := yaml11Bools[n.Value]; ok {
			return "!!bool"
		}
	}
	return tag
}

// isNull reports whether n is missing or null.
func isNull(n *yaml.Node) bool {
	n = deref(n)
	return n == nil || (n.Kind == yaml.ScalarNode && scalarTag(n) == "!!null")
}

// describe names a node's type for error messages, never its value.
func describe(n *yaml.Node) string {
	n = deref(n)
	switch {
	case n == nil:
		return "empty"
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	case n.Kind == yaml.SequenceNode:
		return "a list"
	}
	switch scalarTag(n) {
	case "!!str":
		return "a string"
	case "!!int", "!!float":
		return "a number"
	case "!!bool":
		return "a boolean"
	case "!!null":
		return "empty"
	case "!!timestamp":
		return "a date"
	case "!!binary":
		return "binary data"
	}
	return "a " + strings.TrimPrefix(n.ShortTag(), "!!") + " value"
}

// scalarBool reads a boolean the way PyYAML does.
func scalarBool(n *yaml.Node) (bool, bool) {
	n = deref(n)
	if n == nil || n.Kind != yaml.ScalarNode || scalarTag(n) != "!!bool" {
		return false, false
	}
	if b, ok := yaml11Bools[n.Value]; ok {
		return b, true
	}
	var b bool
	if err := n.Decode(&b); err != nil {
		return false, false
	}
	return b, true
}

// pythonString is the text psycopg2 passes to libpq for a scalar: Python's
// str() of the value PyYAML built. ok is false for null (psycopg2 drops
// None) and for non-scalars.
func pythonString(n *yaml.Node) (s string, ok bool) {
	n = deref(n)
	if n == nil || n.Kind != yaml.ScalarNode {
		return "", false
	}
	switch scalarTag(n) {
	case "!!null":
		return "", false
	case "!!bool":
		if b, _ := scalarBool(n); b {
			return "True", true
		}
		return "False", true
	case "!!int":
		var v any
		if err := n.Decode(&v); err == nil {
			switch i := v.(type) {
			case int:
				return strconv.Itoa(i), true
			case int64:
				return strconv.FormatInt(i, 10), true
			case uint64:
				return strconv.FormatUint(i, 10), true
			}
		}
		return n.Value, true
	default:
		return n.Value, true
	}
}

// toValue converts a node to plain Go values (map[string]any, []any, string,
// int, float64, bool, nil) with PyYAML's rules for repeated and merge keys.
func toValue(n *yaml.Node) any {
	return toValueDepth(n, 0)
}

func toValueDepth(n *yaml.Node, depth int) any {
	n = deref(n)
	if n == nil || depth > 64 {
		return nil
	}
	switch n.Kind {
	case yaml.MappingNode:
		m := map[string]any{}
		for _, kv := range entries(n) {
			m[kv.key] = toValueDepth(kv.value, depth+1)
		}
		return m
	case yaml.SequenceNode:
		l := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			l = append(l, toValueDepth(c, depth+1))
		}
		return l
	case yaml.ScalarNode:
		switch scalarTag(n) {
		case "!!null":
			return nil
		case "!!bool":
			b, _ := scalarBool(n)
			return b
		case "!!str":
			return n.Value
		}
		var v any
		if err := n.Decode(&v); err != nil {
			return n.Value
		}
		return v
	}
	return nil
}

// typeError says that key (read from file) is not of the wanted type.
func typeError(file string, n *yaml.Node, key, want string) *Error {
	line := 0
	if n != nil {
		line = n.Line
	}
	return &Error{Kind: ErrType, File: file, Line: line, Key: key,
		Problem: fmt.Sprintf("must be %s, not %s", want, describe(n)),
		Fix:     "correct this setting (Synapse's configuration manual documents its form)"}
}

// missingError says that a required key inside the mapping at n is not set.
func missingError(file string, n *yaml.Node, key, want string) *Error {
	line := 0
	if n != nil {
		line = n.Line
	}
	return &Error{Kind: ErrType, File: file, Line: line, Key: key,
		Problem: "not set: it must be " + want,
		Fix:     "add it (Synapse's configuration manual documents its form)"}
}
