package repo

import (
	"errors"
	"fmt"
	"io"

	"filippo.io/age"
)

// Encryption at rest
//
// A repository is encrypted or not from its creation (Meta.Encrypted). In an
// encrypted one every object but the metadata (meta/) has its payload
// encrypted with age (filippo.io/age) after compression, to the recipients
// of Options.Recipients; the codec byte carries flagEncrypted. The header
// (magic, codec, attributes) and the trailer (plaintext checksum and length)
// stay in clear, so that listing, planning and Stat work without the key,
// and so that a repeated Put of the same plaintext (which encrypts to other
// bytes) is recognized as identical. Without the identity, verify can check
// an object's framing, size and attributes (--quick); the payload's
// integrity (age's authenticated chunks, then the checksum) needs the key.

// flagEncrypted marks an age-encrypted payload in the codec byte.
const flagEncrypted = 0x80

// ErrEncryption marks encryption problems: an unencrypted write to an
// encrypted repository, a missing or wrong identity, turning encryption on
// for an existing repository.
var ErrEncryption = errors.New("repository encryption")

// IsEncryption reports whether err is an encryption problem.
func IsEncryption(err error) bool { return errors.Is(err, ErrEncryption) }

// encryptTo wraps w so that what is written to it reaches w encrypted to
// recipients; Close finishes the age stream (not w).
func encryptTo(w io.Writer, recipients []age.Recipient) (io.WriteCloser, error) {
	ew, err := age.Encrypt(w, recipients...)
	if err != nil {
		return nil, fmt.Errorf("%w: encrypt: %w", ErrEncryption, err)
	}
	return ew, nil
}

// decryptFrom returns the plaintext of the age stream r.
func (r *Repo) decryptFrom(name string, src io.Reader) (io.Reader, error) {
	if len(r.identities) == 0 {
		return nil, fmt.Errorf("%w: %s is encrypted and no identity is configured: set repository.encryption.identity_file to the age identity (secret key) of one of the repository's recipients", ErrEncryption, name)
	}
	dr, err := age.Decrypt(src, r.identities...)
	if err != nil {
		var nm *age.NoIdentityMatchError
		if errors.As(err, &nm) {
			return nil, fmt.Errorf("%w: none of the configured identities can decrypt %s: repository.encryption.identity_file holds the wrong key", ErrEncryption, name)
		}
		return nil, err
	}
	return dr, nil
}

// checkEncryption compares the options with the repository's metadata.
func (r *Repo) checkEncryption(m Meta) error {
	if !m.Encrypted && len(r.recipients) > 0 {
		return fmt.Errorf("%w: repository %s was created without encryption, and encryption cannot be turned on for an existing repository (its objects are in clear): start a new repository for encrypted backups, or remove repository.encryption.recipients", ErrEncryption, r.b)
	}
	return nil
}
