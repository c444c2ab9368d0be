package awsiid

import (
	"errors"
	"fmt"
	"strings"

	"github.com/sigil-spiffe/sigil/internal/clip"
	"github.com/sigil-spiffe/sigil/internal/selector"
)

// SelectorKind describes the node selectors of aws_iid attestation (as
// SPIRE's), so an entry with a value Attest can never produce
// (aws_iid:instance_id:i-1, aws_iid:account_id:12) is refused when it is
// written:
//
//   - account_id:<12-digit account>, region:<region>, az:<availability zone>
//   - instance:id:<i-...>, image:id:<ami-...>
//   - tag:<key>:<value>, sg:id:<sg-...>, sg:name:<name>
//   - iamrole:<role ARN>
func SelectorKind() selector.Kind {
	match := func(what string, ok func(string) bool) func(string) error {
		return func(v string) error {
			if !ok(v) {
				return fmt.Errorf("%s is not %s", clip.Quote(v), what)
			}
			return nil
		}
	}
	keys := map[string]func(string) error{
		"account_id": match("a 12-digit AWS account ID", reAccountID.MatchString),
		"region":     match("an AWS region name", reRegion.MatchString),
		"az":         match("an availability zone name", reAZ.MatchString),
		"instance": func(v string) error {
			id, ok := strings.CutPrefix(v, "id:")
			if !ok || !reInstanceID.MatchString(id) {
				return fmt.Errorf(`the only instance selector is "instance:id:<i-...>", not %s`, clip.Quote(v))
			}
			return nil
		},
		"image": func(v string) error {
			id, ok := strings.CutPrefix(v, "id:")
			if !ok || !reImageID.MatchString(id) {
				return fmt.Errorf(`the only image selector is "image:id:<ami-...>", not %s`, clip.Quote(v))
			}
			return nil
		},
		"tag": func(v string) error {
			if k, _, ok := strings.Cut(v, ":"); !ok || k == "" {
				return fmt.Errorf("%s is not <key>:<value>", clip.Quote(v))
			}
			return nil
		},
		"sg": func(v string) error {
			switch kind, val, _ := strings.Cut(v, ":"); {
			case val == "":
				return errors.New(`the security group selectors are "sg:id:<sg-...>" and "sg:name:<name>"`)
			case kind == "id" && !strings.HasPrefix(val, "sg-"):
				return fmt.Errorf("%s is not a security group ID (sg-...)", clip.Quote(val))
			case kind != "id" && kind != "name":
				return errors.New(`the security group selectors are "sg:id:<sg-...>" and "sg:name:<name>"`)
			}
			return nil
		},
		"iamrole": func(v string) error {
			if !strings.HasPrefix(v, "arn:") || !strings.Contains(v, ":role/") {
				return fmt.Errorf("%s is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)", clip.Quote(v))
			}
			return nil
		},
	}
	return selector.Kind{
		Type:     Type,
		Producer: `NodeAttestor "aws_iid"`,
		Check:    func(v string) error { return selector.CheckKeyed(v, keys) },
	}
}
