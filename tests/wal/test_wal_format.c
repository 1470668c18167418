/* Tests of the WAL's on-disk building blocks: CRC32C against published test
 * vectors, record and segment-header encoding, the decoder's rejections, and
 * segment file names. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "walt.h"
#include "wal/wal_int.h"

static void crc32c_vectors(void **state) {
    (void)state;
    uint8_t buf[32];
    assert_int_equal(wal_crc32c(0, "123456789", 9), 0xe3069283);
    assert_int_equal(wal_crc32c_portable(0, "123456789", 9), 0xe3069283);
    /* RFC 3720 (iSCSI), appendix B.4. */
    memset(buf, 0, sizeof(buf));
    assert_int_equal(wal_crc32c(0, buf, 32), 0x8a9136aa);
    memset(buf, 0xff, sizeof(buf));
    assert_int_equal(wal_crc32c(0, buf, 32), 0x62a8ab43);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)i;
    assert_int_equal(wal_crc32c(0, buf, 32), 0x46dd794e);
    assert_int_equal(wal_crc32c(0, NULL, 0), 0);
}

/* The hardware and table paths agree on every length and alignment, and a
 * CRC can be continued over a split buffer. */
static void crc32c_paths_agree(void **state) {
    (void)state;
    uint8_t buf[1100];
    walt_data(1, 1, buf);
    walt_data(2, 1, buf + WALT_MAX_DATA);
    walt_data(3, 1, buf + 2 * WALT_MAX_DATA);
    walt_data(4, 1, buf + 3 * WALT_MAX_DATA);
    for (size_t off = 0; off < 9; off++) {
        for (size_t n = 0; n + off <= 1024; n += 37) {
            uint32_t hw = wal_crc32c(0, buf + off, n);
            assert_int_equal(hw, wal_crc32c_portable(0, buf + off, n));
            uint32_t split =
                wal_crc32c(wal_crc32c(0, buf + off, n / 3), buf + off + n / 3, n - n / 3);
            assert_int_equal(hw, split);
        }
    }
}

static void record_roundtrip(void **state) {
    (void)state;
    uint8_t data[WALT_MAX_DATA], out[WALT_MAX_DATA + 64];
    struct wal_entry e, back;
    walt_entry(&e, 42, 7, data);
    size_t n = wal_enc_entry(out, &e);
    assert_int_equal(n % 8, 0);
    assert_int_equal(n, wal_rec_size(WAL_ENTRY_FIXED + e.len));
    struct wal_rec r;
    assert_string_equal(wal_rec_decode(out, n, &r), "checksum mismatch"); /* not sealed */
    wal_seal(out, n);
    assert_null(wal_rec_decode(out, n, &r));
    assert_int_equal(r.type, WAL_REC_ENTRY);
    assert_int_equal(r.size, n);
    wal_rec_entry(&r, &back);
    assert_true(walt_entry_ok(&back, 42, 7));

    struct wal_hard_state hs = {.term = 3, .vote = 2, .commit = 1}, hs2;
    n = wal_enc_hardstate(out, &hs);
    wal_seal(out, n);
    assert_null(wal_rec_decode(out, n, &r));
    wal_rec_hardstate(&r, &hs2);
    assert_memory_equal(&hs, &hs2, sizeof(hs));

    struct wal_snapshot s = {.index = 9, .term = 4}, s2;
    uint32_t mode;
    n = wal_enc_snapshot(out, &s, WAL_SNAPSHOT_DISCARD_LOG);
    wal_seal(out, n);
    assert_null(wal_rec_decode(out, n, &r));
    wal_rec_snapshot(&r, &s2, &mode);
    assert_memory_equal(&s, &s2, sizeof(s));
    assert_int_equal(mode, WAL_SNAPSHOT_DISCARD_LOG);
}

static void record_rejections(void **state) {
    (void)state;
    uint8_t out[128] = {0};
    struct wal_rec r;
    assert_string_equal(wal_rec_decode(out, 128, &r), "zeroed space");
    assert_string_equal(wal_rec_decode(out, 5, &r), "partial record header");
    struct wal_hard_state hs = {1, 2, 3};
    size_t n = wal_enc_hardstate(out, &hs);
    wal_seal(out, n);
    assert_string_equal(wal_rec_decode(out, n - 1, &r), "record runs past the end of the file");
    for (size_t i = 0; i < n * 8; i++) {
        out[i / 8] ^= (uint8_t)(1u << (i % 8));
        assert_non_null(wal_rec_decode(out, sizeof(out), &r));
        out[i / 8] ^= (uint8_t)(1u << (i % 8));
    }
    out[8] = 9;
    assert_string_equal(wal_rec_decode(out, n, &r), "unknown record type");
}

static void segment_header(void **state) {
    (void)state;
    struct wal_seg_hdr h = {.seq = 5, .first_index = 100}, back;
    h.ls = (struct wal_logstate){.hs = {4, 1, 90}, .snap = {50, 3}, .last = 99, .last_term = 4};
    uint8_t buf[WAL_SEG_HDR_SIZE];
    wal_seg_hdr_encode(buf, &h);
    assert_null(wal_seg_hdr_decode(buf, sizeof(buf), &back));
    assert_memory_equal(&h, &back, sizeof(h));
    assert_string_equal(wal_seg_hdr_decode(buf, 100, &back), "file shorter than a segment header");
    buf[30] ^= 1;
    assert_string_equal(wal_seg_hdr_decode(buf, sizeof(buf), &back), "header checksum mismatch");
    buf[0] = 'X';
    assert_non_null(strstr(wal_seg_hdr_decode(buf, sizeof(buf), &back), "bad magic"));
}

static void segment_names(void **state) {
    (void)state;
    char name[WAL_NAME_MAX];
    uint64_t seq, first;
    wal_seg_name(name, 0x1f, 123456789);
    assert_string_equal(name, "000000000000001f-00000000075bcd15.wal");
    assert_int_equal(wal_seg_parse_name(name, &seq, &first), 0);
    assert_int_equal(seq, 0x1f);
    assert_int_equal(first, 123456789);
    assert_int_equal(wal_seg_parse_name("000000000000001f-00000000075bcd15.wal.tmp", &seq, &first),
                     -EINVAL);
    assert_int_equal(wal_seg_parse_name("000000000000001g-00000000075bcd15.wal", &seq, &first),
                     -EINVAL);
    assert_int_equal(wal_seg_parse_name("LOCK", &seq, &first), -EINVAL);
}

static void logstate_rules(void **state) {
    (void)state;
    struct wal_logstate ls = {0};
    assert_int_equal(wal_ls_check_entries(&ls, 1), 0);
    assert_int_equal(wal_ls_check_entries(&ls, 2), -EINVAL);
    wal_ls_entry(&ls, 1, 1);
    wal_ls_entry(&ls, 2, 1);
    wal_ls_entry(&ls, 2, 2); /* overwrite */
    assert_int_equal(ls.last, 2);
    assert_int_equal(ls.last_term, 2);
    struct wal_snapshot s = {.index = 1, .term = 1};
    wal_ls_snapshot(&ls, &s, WAL_SNAPSHOT_KEEP_LOG);
    assert_int_equal(ls.last, 2);
    assert_int_equal(wal_ls_check_entries(&ls, 1), -EINVAL);
    s.index = 0;
    assert_int_equal(wal_ls_check_snapshot(&ls, &s, WAL_SNAPSHOT_KEEP_LOG), -EINVAL);
    s = (struct wal_snapshot){.index = 1, .term = 1};
    wal_ls_snapshot(&ls, &s, WAL_SNAPSHOT_DISCARD_LOG);
    assert_int_equal(ls.last, 1);
    assert_int_equal(ls.last_term, 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(crc32c_vectors),   cmocka_unit_test(crc32c_paths_agree),
        cmocka_unit_test(record_roundtrip), cmocka_unit_test(record_rejections),
        cmocka_unit_test(segment_header),   cmocka_unit_test(segment_names),
        cmocka_unit_test(logstate_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
