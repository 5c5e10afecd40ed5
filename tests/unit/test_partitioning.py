from kafka.partitioner.default import murmur2

from detector.partitioning import partition_for


def test_murmur2_matches_the_java_client_reference_values():
    # Values from Kafka's own UtilsTest.testMurmur2 (signed 32-bit in Java).
    for key, java in (
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
    ):
        assert murmur2(key) == java & 0xFFFFFFFF


def test_partition_uses_the_positive_hash_modulo_partitions():
    assert partition_for("21", 7) == (-973932308 & 0x7FFFFFFF) % 7
    assert {partition_for(f"t-{i}", 4) for i in range(100)} == {0, 1, 2, 3}
