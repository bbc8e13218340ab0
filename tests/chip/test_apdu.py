"""ISO/IEC 7816-4 APDUs: every length case both ways, the eMRTD builders' bytes, and what a
card emulator reads back out of them."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station import apdu
from station.apdu import Command, Response, Status
from station.errors import BadRequest, ProtocolError

H = bytes.fromhex


@pytest.mark.parametrize("command, encoded", [
    (Command(0x00, 0xA4, 0x00, 0x00), "00A40000"),                              # case 1
    (Command(0x00, 0xB0, 0x00, 0x00, le=4), "00B0000004"),                      # case 2S
    (Command(0x00, 0xB0, 0x00, 0x00, le=256), "00B0000000"),                    # 256 is 00
    (Command(0x00, 0xA4, 0x02, 0x0C, H("011E")), "00A4020C02011E"),             # case 3S
    (Command(0x0C, 0xB0, 0x00, 0x00, H("970104"), 256), "0CB0000003970104" "00"),  # case 4S
    (Command(0x00, 0xB0, 0x00, 0x00, le=257), "00B0000000" "0101"),             # case 2E
    (Command(0x00, 0xB0, 0x00, 0x00, le=65536), "00B0000000" "0000"),           # 65536 is 0000
    (Command(0x00, 0xD6, 0x00, 0x00, bytes(256)), "00D6000000" "0100" + "00" * 256),  # 3E
    (Command(0x00, 0xD6, 0x00, 0x00, bytes(256), 4), "00D6000000" "0100" + "00" * 256 + "0004"),
    (Command(0x00, 0xD6, 0x00, 0x00, b"\x01", 300), "00D6000000" "0001" "01" "012C"),  # 4E
])
def test_every_length_case_encodes_and_decodes(command, encoded):
    assert command.encode().hex().upper() == encoded.upper()
    assert Command.decode(H(encoded)) == command


commands = st.builds(
    Command,
    cla=st.integers(0, 255), ins=st.integers(0, 255), p1=st.integers(0, 255),
    p2=st.integers(0, 255),
    data=st.one_of(st.binary(max_size=300), st.binary(min_size=250, max_size=2000),
                   st.sampled_from([bytes(65535)])),
    le=st.one_of(st.none(), st.integers(1, 300), st.integers(1, 65536)),
)


@settings(max_examples=300, deadline=None)
@given(commands)
def test_any_command_survives_encode_decode(command):
    encoded = command.encode()
    assert Command.decode(encoded) == command
    assert (encoded[4:5] == b"\x00" and len(encoded) > 5) == command.extended


@pytest.mark.parametrize("encoded, why", [
    ("00A400", "shorter than its 4-byte header"),
    ("00A4020C03011E", "Lc 3 does not match"),
    ("00A4020C02011E0000", "Lc 2 does not match"),
    ("00B000000000", "fit neither"),
    ("00D6000000000201", "extended Lc 2 does not match"),
    ("00D6000000000001", "extended Lc 0"),
])
def test_malformed_command_is_named(encoded, why):
    with pytest.raises(ProtocolError, match=why):
        Command.decode(H(encoded))


@pytest.mark.parametrize("kwargs, why", [
    ({"le": 0}, "le: 0"),
    ({"le": 65537}, "le: 65537"),
    ({"data": bytes(65536)}, "65536 bytes"),
    ({"cla": 256}, "cla: 256"),
])
def test_impossible_command_is_refused(kwargs, why):
    fields = {"cla": 0, "ins": 0xB0, "p1": 0, "p2": 0, **kwargs}
    with pytest.raises(BadRequest, match=why):
        Command(**fields)


def test_response_encodes_and_decodes():
    response = Response.decode(H("60145F019000"))
    assert response == Response(H("60145F01"), 0x90, 0x00)
    assert response.ok and response.sw == Status.OK
    assert response.encode() == H("60145F019000")
    assert Response.status(0x6A82) == Response(b"", 0x6A, 0x82)
    assert not Response.status(0x6A82).ok
    with pytest.raises(ProtocolError, match="no status word"):
        Response.decode(H("90"))


@pytest.mark.parametrize("sw", [0x9000, 0x6282, 0x6700, 0x6982, 0x6985, 0x6A82, 0x6A86,
                                0x6B00, 0x6D00, 0x6E00, 0x6988, 0x6987, 0x6300, 0x6A80])
def test_every_status_word_has_a_meaning(sw):
    assert sw in apdu.MEANINGS
    assert apdu.describe(sw).startswith(f"{sw:04X} ")
    assert "unknown" not in apdu.describe(sw)


def test_status_families_are_described():
    assert apdu.describe(0x6110) == "6110 16 more response bytes available"
    assert apdu.describe(0x6C00) == "6C00 wrong Le: 256 bytes available"
    assert apdu.describe(0x63C2) == "63C2 verification failed, 2 tries left"
    assert apdu.describe(0x6F00) == "6F00 unknown status"
    assert "secure messaging" in Response.status(0x6988).describe()


# --- builders: the bytes a chip sees ----------------------------------------------------


def test_select_and_authentication_builders():
    assert apdu.select_application(H("A0000002471001")).encode() == H("00A4040C07A0000002471001")
    # 00 A4 02 0C 02 01 1E is the plain SELECT EF.COM of ICAO 9303-11 Appendix D.4.1
    assert apdu.select_file(0x011E).encode() == H("00A4020C02011E")
    assert apdu.get_challenge().encode() == H("0084000008")
    cryptogram = bytes(range(40))
    assert apdu.external_authenticate(cryptogram).encode() == H("0082000028") + cryptogram + H("28")
    with pytest.raises(BadRequest, match="40 bytes"):
        apdu.external_authenticate(bytes(32))
    with pytest.raises(BadRequest, match="AID"):
        apdu.select_application(H("A000"))
    with pytest.raises(BadRequest, match="file id"):
        apdu.select_file(0x10000)


def test_read_binary_uses_p1_p2_up_to_32767_then_odd_ins():
    # READ BINARY of 4 bytes at 0 and 18 at 4: the plain commands of ICAO 9303-11 D.4.2/D.4.3
    assert apdu.read_binary(0, 4).encode() == H("00B0000004")
    assert apdu.read_binary(4, 0x12).encode() == H("00B0000412")
    assert apdu.read_binary(0x7FFF, 1).encode() == H("00B07FFF01")
    odd = apdu.read_binary(0x8000, 0x20)
    assert odd.encode() == H("00B1000004" "54028000" "20")
    assert apdu.binary_offset(odd) == 0x8000
    assert apdu.binary_offset(apdu.read_binary(0x1234, 1)) == 0x1234
    with pytest.raises(BadRequest, match="offset"):
        apdu.read_binary(-1, 1)


def test_update_binary_carries_offset_and_content_both_ways():
    even = apdu.update_binary(0x10, b"AB")
    assert even.encode() == H("00D60010024142")
    assert (apdu.binary_offset(even), apdu.binary_content(even)) == (0x10, b"AB")
    odd = apdu.update_binary(0x12345, b"x")
    assert odd.encode() == H("00D7000008" "5403012345" "530178")
    assert (apdu.binary_offset(odd), apdu.binary_content(odd)) == (0x12345, b"x")


def test_card_side_refuses_what_it_cannot_read():
    with pytest.raises(ProtocolError, match="short EF identifier"):
        apdu.binary_offset(Command(0x00, 0xB0, 0x81, 0x00, le=4))
    with pytest.raises(ProtocolError, match="without an offset"):
        apdu.binary_offset(Command(0x00, 0xB1, 0x00, 0x00, H("530100"), le=4))
    with pytest.raises(ProtocolError, match="not READ BINARY"):
        apdu.binary_offset(apdu.get_challenge())
    with pytest.raises(ProtocolError, match="not UPDATE BINARY"):
        apdu.binary_content(apdu.read_binary(0, 1))
    with pytest.raises(ProtocolError, match="DO'53'"):
        apdu.discretionary_data(H("540100"))


def test_create_file_has_an_fcp_template_the_card_reads_back():
    command = apdu.create_file(0x011E, 0x100)
    assert command.encode() == H("00E000000D" "620B" "80020100" "820101" "8302011E")
    assert apdu.file_control_parameters(command) == (0x011E, 0x100)
    big = apdu.create_file(0x0102, 70_000)
    assert apdu.file_control_parameters(big) == (0x0102, 70_000)
    with pytest.raises(BadRequest, match="size"):
        apdu.create_file(0x0101, 0)
    with pytest.raises(ProtocolError, match="lacks a file id"):
        apdu.file_control_parameters(Command(0x00, 0xE0, 0x00, 0x00, H("6204" "80020100")))


def test_data_objects_take_long_lengths_and_refuse_broken_ones():
    value = bytes(300)
    encoded = apdu.data_object(0x53, value) + apdu.data_object(0x87, b"\x01" * 130)
    assert encoded[:4] == H("53820" "12C")
    assert apdu.data_objects(encoded) == [(0x53, value), (0x87, b"\x01" * 130)]
    for broken, why in ((H("8709019FF0"), "Insufficient data"),
                        (H("1F8100"), "multi-byte tag"),
                        (H("6280" "0000"), "indefinite length")):
        with pytest.raises(ProtocolError, match=why):
            apdu.data_objects(broken)
