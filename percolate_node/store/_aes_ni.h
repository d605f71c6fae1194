/* AES-256 with the CPU's AES instructions, for OpenSSL's GCM mode (CRYPTO_gcm128_*).
 *
 * Why: OpenSSL 3.0's EVP interface costs about 200 ns a seal before any AES or GHASH runs
 * (provider dispatch, OSSL_PARAM lookups by name for the IV length and the tag), more than
 * the cipher itself for the store's small values. OpenSSL still exports the GCM mode
 * under EVP (CRYPTO_gcm128_*, its own GHASH with PCLMULQDQ/AVX picked at run time), which
 * takes the block cipher as two callbacks: one block, and a 32-bit counter stream. This
 * file gives it those, built on AESENC/AESKEYGENASSIST, nothing else: the rounds are the
 * hardware's and run in constant time, the key expansion is the standard one (FIPS-197
 * 5.2 in the form of Intel's AES-NI white paper), and the GCM construction, tag and its
 * constant-time check stay OpenSSL's. tests/test_store.py checks sealed values of both
 * engines against `cryptography`'s AES-GCM both ways (values 0-100,003 bytes, around the
 * four-block stride, associated data past 256 bytes); a review also checked FIPS-197's
 * A.3 schedule and C.3 block and McGrew-Viega's AES-256 cases 13-16.
 *
 * Key material: the schedule lives in the caller's AesNiKey (cleansed by _gcm.c). Local
 * copies of round keys are wiped (OPENSSL_cleanse) and the XMM registers cleared before a
 * function returns, as OpenSSL's own AES-NI assembly does, so nothing of a destroyed DEK
 * stays on the stack or in registers.
 *
 * Used only where the CPU has AES-NI and SSSE3/SSE4.1 (aes_ni_available); elsewhere the
 * store keeps EVP. The functions carry target attributes, so the module needs no global
 * -maes and still loads on any x86-64; non-x86 builds compile none of this.
 */
#ifndef PERCOLATE_AES_NI_H
#define PERCOLATE_AES_NI_H

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AES_NI_CODE 1
#include <immintrin.h>
#include <stddef.h>

#include <openssl/crypto.h>

#define AES256_ROUNDS 14

/* The expanded key: 15 round keys, stored unaligned (loaded with loadu), so any allocator will do. */
typedef struct {
    unsigned char round_keys[AES256_ROUNDS + 1][16];
} AesNiKey;

#define AES_NI_TARGET __attribute__((target("aes,sse4.1")))

static int
aes_ni_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("sse4.1");
}

/* Zeroes xmm0-15 (all SSE code uses; the AVX-512 upper registers are untouched here). */
static inline void
aes_ni_clear_registers(void)
{
    __asm__ volatile("pxor %%xmm0, %%xmm0\n\tpxor %%xmm1, %%xmm1\n\tpxor %%xmm2, %%xmm2\n\tpxor %%xmm3, %%xmm3\n\t"
                     "pxor %%xmm4, %%xmm4\n\tpxor %%xmm5, %%xmm5\n\tpxor %%xmm6, %%xmm6\n\tpxor %%xmm7, %%xmm7\n\t"
                     "pxor %%xmm8, %%xmm8\n\tpxor %%xmm9, %%xmm9\n\tpxor %%xmm10, %%xmm10\n\tpxor %%xmm11, %%xmm11\n\t"
                     "pxor %%xmm12, %%xmm12\n\tpxor %%xmm13, %%xmm13\n\tpxor %%xmm14, %%xmm14\n\tpxor %%xmm15, %%xmm15"
                     ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
                       "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

/* One step of the AES-256 key schedule: prev ^ (prev << 32) ^ (prev << 64) ^ (prev << 96) ^ assist. */
AES_NI_TARGET static inline __m128i
aes_ni_expand_step(__m128i prev, __m128i assist)
{
    prev = _mm_xor_si128(prev, _mm_slli_si128(prev, 4));
    prev = _mm_xor_si128(prev, _mm_slli_si128(prev, 4));
    prev = _mm_xor_si128(prev, _mm_slli_si128(prev, 4));
    return _mm_xor_si128(prev, assist);
}

/* Round keys 2i+2 (RotWord, SubWord, rcon) and 2i+3 (SubWord only); rcon must be a constant. */
#define AES_NI_EXPAND_PAIR(rk, i, rcon)                                                                          \
    do {                                                                                                          \
        (rk)[2 * (i) + 2] = aes_ni_expand_step((rk)[2 * (i)],                                                    \
                                               _mm_shuffle_epi32(_mm_aeskeygenassist_si128((rk)[2 * (i) + 1], rcon), 0xff)); \
        (rk)[2 * (i) + 3] = aes_ni_expand_step((rk)[2 * (i) + 1],                                                \
                                               _mm_shuffle_epi32(_mm_aeskeygenassist_si128((rk)[2 * (i) + 2], 0), 0xaa)); \
    } while (0)

AES_NI_TARGET static void
aes_ni_expand_key(AesNiKey *out, const unsigned char key[32])
{
    __m128i rk[AES256_ROUNDS + 1];
    rk[0] = _mm_loadu_si128((const __m128i *)key);
    rk[1] = _mm_loadu_si128((const __m128i *)(key + 16));
    AES_NI_EXPAND_PAIR(rk, 0, 0x01);
    AES_NI_EXPAND_PAIR(rk, 1, 0x02);
    AES_NI_EXPAND_PAIR(rk, 2, 0x04);
    AES_NI_EXPAND_PAIR(rk, 3, 0x08);
    AES_NI_EXPAND_PAIR(rk, 4, 0x10);
    AES_NI_EXPAND_PAIR(rk, 5, 0x20);
    rk[14] = aes_ni_expand_step(rk[12], _mm_shuffle_epi32(_mm_aeskeygenassist_si128(rk[13], 0x40), 0xff));
    for (int i = 0; i <= AES256_ROUNDS; i++)
        _mm_storeu_si128((__m128i *)out->round_keys[i], rk[i]);
    OPENSSL_cleanse(rk, sizeof(rk));
    aes_ni_clear_registers();
}

/* OpenSSL's block128_f: out = AES-256(key, in). */
AES_NI_TARGET static void
aes_ni_block(const unsigned char in[16], unsigned char out[16], const void *key)
{
    const AesNiKey *k = key;
    __m128i b = _mm_xor_si128(_mm_loadu_si128((const __m128i *)in), _mm_loadu_si128((const __m128i *)k->round_keys[0]));
    for (int r = 1; r < AES256_ROUNDS; r++)
        b = _mm_aesenc_si128(b, _mm_loadu_si128((const __m128i *)k->round_keys[r]));
    b = _mm_aesenclast_si128(b, _mm_loadu_si128((const __m128i *)k->round_keys[AES256_ROUNDS]));
    _mm_storeu_si128((__m128i *)out, b);
    aes_ni_clear_registers();
}

/* OpenSSL's ctr128_f: XORs `blocks` blocks of in with the key stream of counter blocks
 * ivec, ivec+1, ... where only the last 32 bits (big-endian) count and wrap, as GCM wants.
 * Four blocks at a time keep the AES unit's pipeline full. */
AES_NI_TARGET static void
aes_ni_ctr32(const unsigned char *in, unsigned char *out, size_t blocks, const void *key, const unsigned char ivec[16])
{
    const AesNiKey *k = key;
    __m128i rk[AES256_ROUNDS + 1];
    for (int r = 0; r <= AES256_ROUNDS; r++)
        rk[r] = _mm_loadu_si128((const __m128i *)k->round_keys[r]);
    /* byte-swap the last four bytes in place: the counter becomes 32-bit lane 3, host order */
    const __m128i swap = _mm_set_epi8(12, 13, 14, 15, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m128i one = _mm_set_epi32(1, 0, 0, 0);
    __m128i counter = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)ivec), swap);
    for (; blocks >= 4; blocks -= 4, in += 64, out += 64) {
        __m128i c1 = _mm_add_epi32(counter, one), c2 = _mm_add_epi32(c1, one), c3 = _mm_add_epi32(c2, one);
        __m128i b0 = _mm_xor_si128(_mm_shuffle_epi8(counter, swap), rk[0]);
        __m128i b1 = _mm_xor_si128(_mm_shuffle_epi8(c1, swap), rk[0]);
        __m128i b2 = _mm_xor_si128(_mm_shuffle_epi8(c2, swap), rk[0]);
        __m128i b3 = _mm_xor_si128(_mm_shuffle_epi8(c3, swap), rk[0]);
        counter = _mm_add_epi32(c3, one);
        for (int r = 1; r < AES256_ROUNDS; r++) {
            b0 = _mm_aesenc_si128(b0, rk[r]);
            b1 = _mm_aesenc_si128(b1, rk[r]);
            b2 = _mm_aesenc_si128(b2, rk[r]);
            b3 = _mm_aesenc_si128(b3, rk[r]);
        }
        b0 = _mm_aesenclast_si128(b0, rk[AES256_ROUNDS]);
        b1 = _mm_aesenclast_si128(b1, rk[AES256_ROUNDS]);
        b2 = _mm_aesenclast_si128(b2, rk[AES256_ROUNDS]);
        b3 = _mm_aesenclast_si128(b3, rk[AES256_ROUNDS]);
        _mm_storeu_si128((__m128i *)out, _mm_xor_si128(b0, _mm_loadu_si128((const __m128i *)in)));
        _mm_storeu_si128((__m128i *)(out + 16), _mm_xor_si128(b1, _mm_loadu_si128((const __m128i *)(in + 16))));
        _mm_storeu_si128((__m128i *)(out + 32), _mm_xor_si128(b2, _mm_loadu_si128((const __m128i *)(in + 32))));
        _mm_storeu_si128((__m128i *)(out + 48), _mm_xor_si128(b3, _mm_loadu_si128((const __m128i *)(in + 48))));
    }
    for (; blocks > 0; blocks--, in += 16, out += 16) {
        __m128i b = _mm_xor_si128(_mm_shuffle_epi8(counter, swap), rk[0]);
        counter = _mm_add_epi32(counter, one);
        for (int r = 1; r < AES256_ROUNDS; r++)
            b = _mm_aesenc_si128(b, rk[r]);
        b = _mm_aesenclast_si128(b, rk[AES256_ROUNDS]);
        _mm_storeu_si128((__m128i *)out, _mm_xor_si128(b, _mm_loadu_si128((const __m128i *)in)));
    }
    OPENSSL_cleanse(rk, sizeof(rk)); /* the compiler spills the round keys: wipe them */
    aes_ni_clear_registers();
}

#else
#define HAVE_AES_NI_CODE 0
#endif

#endif
