package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// writeTree prints a JSON object as qemu-img prints format-specific
// information: one "key: value" line per field, nested objects and lists
// indented by four spaces, dashes in keys shown as spaces, key order kept.
func writeTree(w io.Writer, js []byte, depth int) error {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var v any
	if err := decodeOrdered(dec, &v); err != nil {
		return err
	}
	printNode(w, v, depth)
	return nil
}

type field struct {
	key string
	val any
}

// decodeOrdered decodes one JSON value, keeping object keys in order as
// []field.
func decodeOrdered(dec *json.Decoder, out *any) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			var obj []field
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return err
				}
				var v any
				if err := decodeOrdered(dec, &v); err != nil {
					return err
				}
				obj = append(obj, field{kt.(string), v})
			}
			*out = obj
		case '[':
			var list []any
			for dec.More() {
				var v any
				if err := decodeOrdered(dec, &v); err != nil {
					return err
				}
				list = append(list, v)
			}
			*out = list
		}
		_, err = dec.Token() // closing delimiter
		return err
	default:
		*out = t
		return nil
	}
}

func printNode(w io.Writer, v any, depth int) {
	pad := strings.Repeat("    ", depth)
	switch t := v.(type) {
	case []field:
		for _, f := range t {
			key := strings.ReplaceAll(f.key, "-", " ")
			if isScalar(f.val) {
				fmt.Fprintf(w, "%s%s: %s\n", pad, key, scalar(f.val))
				continue
			}
			fmt.Fprintf(w, "%s%s:\n", pad, key)
			printNode(w, f.val, depth+1)
		}
	case []any:
		for i, e := range t {
			fmt.Fprintf(w, "%s[%d]:\n", pad, i)
			printNode(w, e, depth+1)
		}
	}
}

func isScalar(v any) bool {
	switch v.(type) {
	case []field, []any:
		return false
	}
	return true
}

func scalar(v any) string {
	if v == nil {
		return "null"
	}
	return fmt.Sprint(v)
}
