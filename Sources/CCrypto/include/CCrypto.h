// SHA-256 through OpenSSL's libcrypto (EVP), streaming: of a file, for the
// image checksums crsnap records at take time and checks before a restore;
// of bytes handed over piece by piece, for the entries of an archive.
#ifndef CRSNAP_CCRYPTO_H
#define CRSNAP_CCRYPTO_H

#include <stddef.h>

/// Hashes everything readable from `fd` (from its current offset) into
/// `out` (32 bytes). Returns 0, or -1 with errno set (EIO for a libcrypto
/// failure). `bytes` gets the number of bytes hashed.
int crsnap_sha256_fd(int fd, unsigned char out[32], unsigned long long *bytes);

/// An incremental SHA-256 (for bytes that stream past, e.g. an archive's
/// entries): new returns NULL on failure; update and final return 0, or -1
/// (EIO). final writes 32 bytes and frees the context.
typedef struct crsnap_sha256 crsnap_sha256;
crsnap_sha256 *crsnap_sha256_new(void);
int crsnap_sha256_update(crsnap_sha256 *h, const void *data, size_t len);
int crsnap_sha256_final(crsnap_sha256 *h, unsigned char out[32]);
void crsnap_sha256_free(crsnap_sha256 *h);

#endif
