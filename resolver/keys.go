package resolver

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// masterKeyLen is the AES-256 key size.
const masterKeyLen = 32

// HKDF labels: one master key, a distinct derived key per purpose, so the
// token HMAC secret and the encryption key never coincide.
const (
	labelEncryption = "tollgate/resolver/credential-encryption/v1"
	labelTokenMAC   = "tollgate/resolver/token-hmac/v1"
	labelKeyID      = "tollgate/resolver/key-id/v1"
	aadPrefix       = "tollgate/resolver/credential/"
)

// ParseMasterKey decodes a 32-byte master key given as 64 hex digits or as
// base64 (standard or URL alphabet, padded or not), ignoring surrounding
// whitespace. The error never repeats the input.
func ParseMasterKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if len(s) == 2*masterKeyLen {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == masterKeyLen {
			return b, nil
		}
	}
	return nil, fmt.Errorf("%w: want %d bytes as base64 or %d hex digits", ErrInvalidMasterKey, masterKeyLen, 2*masterKeyLen)
}

// masterKey is one master key and what is derived from it.
type masterKey struct {
	id   string
	aead cipher.AEAD
	mac  macKey
}

// macKey holds the HMAC-SHA256 pads of the token secret, so a token's MAC
// is computed on the stack without allocating (the hot path of
// Authenticate). It equals crypto/hmac's output; a test checks.
type macKey struct {
	ipad, opad [sha256.BlockSize]byte
}

func newMasterKey(raw []byte) (*masterKey, error) {
	if len(raw) != masterKeyLen {
		return nil, fmt.Errorf("%w: must be %d bytes, got %d", ErrInvalidMasterKey, masterKeyLen, len(raw))
	}
	derive := func(label string, n int) ([]byte, error) {
		return hkdf.Key(sha256.New, raw, nil, label, n)
	}
	enc, err := derive(labelEncryption, 32)
	if err != nil {
		return nil, fmt.Errorf("derive key: %w", err)
	}
	macSecret, err := derive(labelTokenMAC, 32)
	if err != nil {
		return nil, fmt.Errorf("derive key: %w", err)
	}
	id, err := derive(labelKeyID, 4)
	if err != nil {
		return nil, fmt.Errorf("derive key: %w", err)
	}
	block, err := aes.NewCipher(enc)
	if err != nil {
		return nil, fmt.Errorf("cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("cipher: %w", err)
	}
	k := &masterKey{id: hex.EncodeToString(id), aead: aead}
	for i := range k.mac.ipad {
		k.mac.ipad[i], k.mac.opad[i] = 0x36, 0x5c
	}
	for i, b := range macSecret {
		k.mac.ipad[i] ^= b
		k.mac.opad[i] ^= b
	}
	return k, nil
}

// sum returns HMAC-SHA256(secret, token) for a token of tokenLen bytes.
// The caller has checked the length; the buffers stay on the stack.
func (m *macKey) sum(token string) [sha256.Size]byte {
	var in [sha256.BlockSize + tokenLen]byte
	copy(in[:], m.ipad[:])
	copy(in[sha256.BlockSize:], token)
	inner := sha256.Sum256(in[:])
	var out [sha256.BlockSize + sha256.Size]byte
	copy(out[:], m.opad[:])
	copy(out[sha256.BlockSize:], inner[:])
	return sha256.Sum256(out[:])
}

// keyring is the current master key and the previous ones still read.
// It is immutable; RotateKey swaps in a new one.
type keyring struct {
	current *masterKey
	all     []*masterKey // current first
}

func newKeyring(current []byte, previous [][]byte) (*keyring, error) {
	cur, err := newMasterKey(current)
	if err != nil {
		return nil, fmt.Errorf("MasterKey: %w", err)
	}
	kr := &keyring{current: cur, all: []*masterKey{cur}}
	for i, raw := range previous {
		k, err := newMasterKey(raw)
		if err != nil {
			return nil, fmt.Errorf("PreviousKeys[%d]: %w", i, err)
		}
		if kr.byID(k.id) == nil {
			kr.all = append(kr.all, k)
		}
	}
	return kr, nil
}

func (kr *keyring) byID(id string) *masterKey {
	for _, k := range kr.all {
		if k.id == id {
			return k
		}
	}
	return nil
}

// errUnknownKey marks a ciphertext written under a key this process lacks.
var errUnknownKey = errors.New("encrypted with an unknown master key")

// seal encrypts plaintext for credential credID. The AAD binds the
// ciphertext to its credential, so copying it onto another row fails to
// decrypt instead of handing one tenant's key to another.
func (k *masterKey) seal(credID, plaintext string) (string, error) {
	nonce := make([]byte, k.aead.NonceSize(), k.aead.NonceSize()+len(plaintext)+k.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("nonce: %w", err)
	}
	out := k.aead.Seal(nonce, nonce, []byte(plaintext), []byte(aadPrefix+credID))
	return base64.StdEncoding.EncodeToString(out), nil
}

func (k *masterKey) open(credID, ciphertext string) (string, error) {
	b, err := base64.StdEncoding.DecodeString(ciphertext)
	if err != nil || len(b) < k.aead.NonceSize() {
		return "", errors.New("malformed ciphertext")
	}
	n := k.aead.NonceSize()
	pt, err := k.aead.Open(nil, b[:n], b[n:], []byte(aadPrefix+credID))
	if err != nil {
		return "", errors.New("ciphertext does not authenticate")
	}
	return string(pt), nil
}

func (kr *keyring) open(credID, keyID, ciphertext string) (string, error) {
	k := kr.byID(keyID)
	if k == nil {
		return "", errUnknownKey
	}
	return k.open(credID, ciphertext)
}

// checkKey refuses a master key the database was not written with: loud at
// start beats every credential failing one request at a time.
func (s *Service) checkKey(ctx context.Context) error {
	kr := s.keys.Load()
	var dbKey string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM resolver_meta WHERE name = 'key_id'`).Scan(&dbKey)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := s.db.ExecContext(ctx, `INSERT INTO resolver_meta (name, value) VALUES ('key_id', $1) ON CONFLICT (name) DO NOTHING`, kr.current.id); err != nil {
			return fmt.Errorf("record key id: %w", err)
		}
	case err != nil:
		return fmt.Errorf("read key id: %w", err)
	case kr.byID(dbKey) == nil:
		return fmt.Errorf("master key %s (and previous keys) do not match key %s the database was written with: %w", kr.current.id, dbKey, ErrWrongMasterKey)
	}

	rows, err := s.db.QueryContext(ctx, `SELECT key_id, COUNT(*) FROM resolver_credentials GROUP BY key_id`)
	if err != nil {
		return fmt.Errorf("check master key: %w", err)
	}
	defer rows.Close()
	var total, known int
	for rows.Next() {
		var keyID string
		var n int
		if err := rows.Scan(&keyID, &n); err != nil {
			return fmt.Errorf("check master key: %w", err)
		}
		total += n
		if kr.byID(keyID) != nil {
			known += n
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("check master key: %w", err)
	}
	if total > 0 && known == 0 {
		return fmt.Errorf("none of %d credentials is encrypted with master key %s or a previous key: %w", total, kr.current.id, ErrWrongMasterKey)
	}
	if known < total {
		s.log.Warn("some credentials are encrypted with a master key this process lacks; they resolve as unusable",
			"unknown_key", total-known, "total", total)
	}
	return nil
}

// RotateKey re-encrypts every credential from oldKey to newKey in one
// transaction and records newKey as the database's key; credentials already
// under newKey are left alone. A credential under any other key aborts the
// rotation (ErrWrongMasterKey) and nothing changes. Afterwards this Service
// writes with newKey and still reads with oldKey (so tokens issued under it
// keep authenticating until they expire); other processes need newKey as
// their MasterKey, with oldKey in PreviousKeys until those tokens expire.
func (s *Service) RotateKey(ctx context.Context, oldKey, newKey []byte) error {
	oldK, err := newMasterKey(oldKey)
	if err != nil {
		return fmt.Errorf("rotate key: old key: %w", err)
	}
	newK, err := newMasterKey(newKey)
	if err != nil {
		return fmt.Errorf("rotate key: new key: %w", err)
	}
	now := s.now()
	err = s.write(ctx, change{changeKey, ""}, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT id, key_id, ciphertext FROM resolver_credentials ORDER BY id`)
		if err != nil {
			return err
		}
		type row struct{ id, keyID, ct string }
		var all []row
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.id, &r.keyID, &r.ct); err != nil {
				rows.Close()
				return err
			}
			all = append(all, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, r := range all {
			if r.keyID == newK.id {
				continue
			}
			if r.keyID != oldK.id {
				return fmt.Errorf("credential %s is under key %s, not the old key %s: %w", r.id, r.keyID, oldK.id, ErrWrongMasterKey)
			}
			pt, err := oldK.open(r.id, r.ct)
			if err != nil {
				return fmt.Errorf("credential %s: %v: %w", r.id, err, ErrWrongMasterKey)
			}
			ct, err := newK.seal(r.id, pt)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE resolver_credentials SET key_id = $1, ciphertext = $2, updated_at = $3 WHERE id = $4`, newK.id, ct, now, r.id); err != nil {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO resolver_meta (name, value) VALUES ('key_id', $1) ON CONFLICT (name) DO UPDATE SET value = excluded.value`, newK.id)
		return err
	})
	if err != nil {
		return fmt.Errorf("rotate key: %w", err)
	}
	cur := s.keys.Load()
	kr := &keyring{current: newK, all: []*masterKey{newK}}
	for _, k := range append([]*masterKey{oldK}, cur.all...) {
		if kr.byID(k.id) == nil {
			kr.all = append(kr.all, k)
		}
	}
	s.keys.Store(kr)
	s.unreadable.Clear()
	s.invalidateTokens()
	return nil
}
