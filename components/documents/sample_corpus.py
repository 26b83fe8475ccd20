"""A small 3GPP-style corpus that the project writes itself.

None of this is 3GPP specification text (that is copyrighted): the specifications are fictional
(TS 38.899, TS 23.599) and the prose is ours, written in the shape of a real release — cover
line, "3.2 Abbreviations", numbered clauses, captioned tables, spec references — so every stage
sees what it will see on real input: .docx inside .zip (two releases of one spec, i.e. near
duplicates), a vendor PDF, Markdown and HTML. The Word files are written by ``spec_word``, as
the ETSI-layout test fixtures' are.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from components.documents import spec_word
from components.documents.spec_word import WordClause, zip_bytes
from components.files import staged_dir

SAMPLE_VERSION = "v2"


@dataclass
class Section:
    number: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: tuple[str, list[str], list[list[str]]] | None = None  # caption, header, rows


@dataclass
class SpecDoc:
    spec: str  # "38.899"
    version: str  # "17.0.0"
    title: str
    date: str
    abbreviations: list[tuple[str, str]]
    sections: list[Section]

    @property
    def stem(self) -> str:
        major, minor, patch = (int(x) for x in self.version.split("."))
        code = "".join("0123456789abcdefghijklmnopqrstuvwxyz"[n] for n in (major, minor, patch))
        return f"{self.spec.replace('.', '')}-{code}"

    @property
    def release(self) -> int:
        return int(self.version.split(".")[0])


NR_ABBREVIATIONS = [
    ("AMF", "Access and Mobility Management Function"),
    ("BWP", "Bandwidth Part"),
    ("CU", "Central Unit"),
    ("DRB", "Data Radio Bearer"),
    ("DU", "Distributed Unit"),
    ("gNB", "next generation Node B"),
    ("MAC", "Medium Access Control"),
    ("PDCP", "Packet Data Convergence Protocol"),
    ("RLC", "Radio Link Control"),
    ("RRC", "Radio Resource Control"),
    ("SDAP", "Service Data Adaptation Protocol"),
    ("SRB", "Signalling Radio Bearer"),
    ("UE", "User Equipment"),
    ("ARQ", "Automatic Repeat Request"),
    ("BCCH", "Broadcast Control Channel"),
    ("BLER", "Block Error Rate"),
    ("C-RNTI", "Cell Radio Network Temporary Identifier"),
    ("CCCH", "Common Control Channel"),
    ("CORESET", "Control Resource Set"),
    ("CQI", "Channel Quality Indicator"),
    ("CSI", "Channel State Information"),
    ("DCI", "Downlink Control Information"),
    ("DL-SCH", "Downlink Shared Channel"),
    ("FDD", "Frequency Division Duplex"),
    ("HARQ", "Hybrid Automatic Repeat Request"),
    ("MCS", "Modulation and Coding Scheme"),
    ("MIB", "Master Information Block"),
    ("PBCH", "Physical Broadcast Channel"),
    ("PDCCH", "Physical Downlink Control Channel"),
    ("PDSCH", "Physical Downlink Shared Channel"),
    ("PRACH", "Physical Random Access Channel"),
    ("PRB", "Physical Resource Block"),
    ("PUCCH", "Physical Uplink Control Channel"),
    ("PUSCH", "Physical Uplink Shared Channel"),
    ("RACH", "Random Access Channel"),
    ("RSRQ", "Reference Signal Received Quality"),
    ("SCS", "Subcarrier Spacing"),
    ("SIB", "System Information Block"),
    ("SINR", "Signal to Interference plus Noise Ratio"),
    ("SRS", "Sounding Reference Signal"),
    ("SSB", "Synchronization Signal Block"),
    ("TDD", "Time Division Duplex"),
    ("UL-SCH", "Uplink Shared Channel"),
]

CORE_ABBREVIATIONS = [
    ("AMF", "Access and Mobility Management Function"),
    ("DNN", "Data Network Name"),
    ("NRF", "Network Repository Function"),
    ("PCF", "Policy Control Function"),
    ("PDU", "Protocol Data Unit"),
    ("QoS", "Quality of Service"),
    ("SMF", "Session Management Function"),
    ("S-NSSAI", "Single Network Slice Selection Assistance Information"),
    ("UPF", "User Plane Function"),
    ("5QI", "5G QoS Identifier"),
    ("AF", "Application Function"),
    ("ARP", "Allocation and Retention Priority"),
    ("AUSF", "Authentication Server Function"),
    ("DN", "Data Network"),
    ("GBR", "Guaranteed Bit Rate"),
    ("GUTI", "Globally Unique Temporary Identifier"),
    ("N3IWF", "Non-3GPP Interworking Function"),
    ("NEF", "Network Exposure Function"),
    ("NSI", "Network Slice Instance"),
    ("NSSF", "Network Slice Selection Function"),
    ("PCO", "Protocol Configuration Options"),
    ("PLMN", "Public Land Mobile Network"),
    ("QFI", "QoS Flow Identifier"),
    ("SCP", "Service Communication Proxy"),
    ("SEPP", "Security Edge Protection Proxy"),
    ("SSC", "Session and Service Continuity"),
    ("SUCI", "Subscription Concealed Identifier"),
    ("SUPI", "Subscription Permanent Identifier"),
    ("UDM", "Unified Data Management"),
    ("UDR", "Unified Data Repository"),
    ("URSP", "UE Route Selection Policy"),
]


def _nr_sections(release: int) -> list[Section]:
    timers = [
        ["T300", "100", "RRC connection establishment supervision"],
        ["T301", "200", "RRC re-establishment supervision"],
        ["T310", "1000", "Radio link failure detection"],
        ["T311", "3000", "Cell selection after radio link failure"],
    ]
    if release >= 18:
        timers.append(["T319a", "500", "Small data transmission supervision"])
    sections = [
        Section("1", "Scope", [
            "The present document describes example signalling procedures between the UE and the "
            "gNB for a fictional NR feature set. It is written for testing a document pipeline and "
            "is not a 3GPP specification.",
        ]),
        Section("2", "References", [
            "The following documents contain provisions which, through reference in this text, "
            "constitute provisions of the present document.",
            "[1] 3GPP TR 21.905: \"Vocabulary for 3GPP Specifications\".",
            "[2] 3GPP TS 38.300: \"NR; Overall description; Stage-2\".",
            "[3] 3GPP TS 38.321: \"NR; Medium Access Control (MAC) protocol specification\".",
            "[4] 3GPP TS 38.323: \"NR; Packet Data Convergence Protocol (PDCP) specification\".",
        ]),
        Section("3", "Definitions, symbols and abbreviations", []),
        Section("3.1", "Definitions", [
            "Serving cell: the cell on which the UE is camped or to which it is connected.",
            "Bandwidth part: a subset of contiguous common resource blocks configured for the UE.",
            "Active bandwidth part: the bandwidth part on which the UE currently transmits and receives.",
            "Default bandwidth part: the bandwidth part the UE returns to when its inactivity timer expires.",
            "Primary cell: the serving cell on which the UE performs initial access and reads system information.",
            "Secondary cell: a serving cell that adds radio resources on top of the primary cell.",
            "Link recovery: the attempt of the UE to restore a failing radio link before it declares a failure.",
            "Small data: uplink user data small enough to be sent while the UE stays in RRC_INACTIVE.",
            "Packet duplication: the sending of the same packet over two independent radio paths.",
            "Measurement gap: a period in which the UE pauses its service to measure other frequencies.",
        ]),
        Section("4", "General", [
            "The RRC protocol controls the connection between the UE and the gNB. It carries "
            "system information, connection control and measurement configuration. Signalling "
            "radio bearers carry RRC messages, while data radio bearers carry user plane traffic "
            "through SDAP, PDCP, RLC and MAC as specified in TS 38.300 [2].",
            "A gNB may be split into a central unit and one or more distributed units. The CU "
            "hosts RRC and PDCP, and the DU hosts RLC, MAC and the physical layer.",
        ]),
        Section("5", "Procedures", []),
        Section("5.1", "RRC connection establishment", [
            "The UE initiates RRC connection establishment when upper layers request a connection "
            "while the UE is in RRC_IDLE. The UE starts timer T300 and sends the "
            "RRCSetupRequest message on SRB0.",
            "Upon reception of the RRCSetup message, the UE stops timer T300, establishes SRB1 and "
            "enters RRC_CONNECTED. If timer T300 expires, the UE informs upper layers about the "
            "failure to establish the RRC connection.",
        ]),
        Section("5.2", "Radio link failure", [
            "The UE detects a radio link failure when timer T310 expires, when the MAC entity "
            "indicates a random access problem, or when the RLC entity indicates that the maximum "
            "number of retransmissions has been reached, see TS 38.321 [3].",
            "After a radio link failure the UE starts timer T311 and performs cell selection. The "
            "UE initiates RRC re-establishment when a suitable cell is found before T311 expires.",
        ], ("Table 5.2-1: Timer values", ["Timer", "Value (ms)", "Purpose"], timers)),
        Section("5.3", "Bandwidth part switching", [
            "The gNB configures up to four bandwidth parts per serving cell. Only one BWP is "
            "active at a time. The gNB switches the active BWP with downlink control information, "
            "and the UE falls back to the default BWP when the inactivity timer expires.",
        ]),
        Section("5.4", "PDCP duplication", [
            "PDCP duplication sends the same PDCP PDU over two RLC entities to improve "
            "reliability. The gNB activates or deactivates duplication per DRB with a MAC control "
            "element, as described in TS 38.323 [4].",
        ]),
    ]
    if release >= 18:
        sections.append(Section("5.5", "Small data transmission", [
            "Small data transmission lets a UE in RRC_INACTIVE send a small amount of uplink "
            "data without moving to RRC_CONNECTED. The UE starts timer T319a when it initiates "
            "the procedure and stops it when the gNB confirms the transmission.",
        ]))
    return sections


def _core_sections() -> list[Section]:
    return [
        Section("1", "Scope", [
            "The present document gives an example architecture for session management in a "
            "fictional 5G core profile. It exists to test a document pipeline and is not a 3GPP "
            "specification.",
        ]),
        Section("2", "References", [
            "[1] 3GPP TR 21.905: \"Vocabulary for 3GPP Specifications\".",
            "[2] 3GPP TS 23.501: \"System architecture for the 5G System (5GS)\".",
            "[3] 3GPP TS 23.502: \"Procedures for the 5G System (5GS)\".",
        ]),
        Section("3", "Definitions, symbols and abbreviations", []),
        Section("3.1", "Definitions", [
            "PDU session: an association between the UE and a data network that carries user data.",
            "Network slice: a logical network that offers a defined set of capabilities to a group of users.",
            "QoS flow: the finest granularity at which the core network tells apart user plane treatment.",
            "Session anchor: the user plane function that terminates the interface towards the data network.",
            "Registration area: the set of tracking areas in which the UE may move without registering again.",
            "Policy rule: a set of instructions with which the policy function steers charging and QoS.",
            "Inactivity period: the time without user data after which the network may release a session.",
            "Subscription data: the information held for a subscriber that the network uses to authorise services.",
        ]),
        Section("4", "Architecture", [
            "The AMF terminates the N1 and N2 interfaces and handles registration and mobility. "
            "The SMF establishes, modifies and releases PDU sessions and selects the UPF that "
            "anchors the session, following TS 23.501 [2].",
            "The PCF provides policy rules for QoS control and charging to the SMF. Network "
            "functions discover each other through the NRF.",
        ]),
        Section("5", "PDU session establishment", [
            "The UE requests a PDU session with a DNN and an S-NSSAI. The AMF selects an SMF that "
            "supports the requested slice and forwards the request. The SMF obtains policy from "
            "the PCF, selects a UPF and returns the QoS rules to the UE, see TS 23.502 [3].",
            "When the UPF cannot be selected, the SMF rejects the request with a cause value that "
            "indicates insufficient resources for the slice.",
        ], ("Table 5-1: QoS flow parameters", ["Parameter", "Owner", "Description"], [
            ["5QI", "PCF", "Identifies the QoS characteristics of a flow"],
            ["ARP", "PCF", "Allocation and retention priority"],
            ["GFBR", "SMF", "Guaranteed flow bit rate for GBR flows"],
        ])),
        Section("6", "Session release", [
            "The SMF releases a PDU session when the UE requests it, when the subscription is "
            "withdrawn, or when the UPF reports that the session has been idle for longer than "
            "the configured inactivity period.",
        ]),
    ]


def spec_documents() -> list[SpecDoc]:
    return [
        SpecDoc("38.899", "17.0.0", "NR; Example signalling procedures (Release 17)", "2026-03",
                NR_ABBREVIATIONS, _nr_sections(17)),
        SpecDoc("38.899", "18.0.0", "NR; Example signalling procedures (Release 18)", "2026-09",
                NR_ABBREVIATIONS, _nr_sections(18)),
        SpecDoc("23.599", "17.1.0", "5G System; Example session management (Release 17)", "2026-06",
                CORE_ABBREVIATIONS, _core_sections()),
    ]


def _docx_bytes(doc: SpecDoc) -> bytes:
    # Cover page as 3GPP writes it: spec number with version and date, then the title; the
    # abbreviations as clause 3.2, after the last clause 3.x.
    clauses = []
    for i, sec in enumerate(doc.sections):
        clauses.append(WordClause(f"{sec.number}\t{sec.title}", sec.number.count(".") + 1,
                                  list(sec.paragraphs), table=sec.table))
        nxt = doc.sections[i + 1].number if i + 1 < len(doc.sections) else ""
        if sec.number.split(".")[0] == "3" and nxt.split(".")[0] != "3":
            clauses.append(WordClause("3.2\tAbbreviations", 2, [
                "For the purposes of the present document, the following abbreviations apply."],
                abbreviations=list(doc.abbreviations)))
    return spec_word.docx_bytes([f"3GPP TS {doc.spec} V{doc.version} ({doc.date})", "Technical Specification",
                                 doc.title], clauses, title=f"3GPP TS {doc.spec} V{doc.version}",
                                author="telecom-finetune sample")


VENDOR_GUIDE = [
    ("1 Introduction", [
        "This guide explains how to configure an example gNB product for a private 5G network. "
        "It covers cell parameters, transport and alarm handling.",
    ]),
    ("2 Cell configuration", [
        "Each cell is configured with a physical cell identity, a carrier frequency and a "
        "subcarrier spacing. The operator sets the maximum transmit power per carrier in dBm.",
        "The tracking area code must match the value configured in the AMF. A mismatch causes "
        "registration rejects that appear as alarm ALM-2041 in the fault log.",
    ]),
    ("3 Transport", [
        "The NG interface uses SCTP towards the AMF and GTP-U towards the UPF. The F1 interface "
        "connects the CU and the DU. Each interface can be bound to its own VLAN.",
    ]),
    ("4 Alarms", [
        "ALM-2041 indicates an NG setup failure. ALM-3307 indicates that the F1 link is down. "
        "Clear ALM-3307 by restoring transport between the CU and the DU.",
    ]),
]

OPERATOR_NOTES = """# Operator notes: NR rollout checklist

## 1 Scope

These notes summarise the checks an operator runs before a cell goes live. They refer to
TS 38.899 and TS 23.599 in this sample corpus.

## 2 Abbreviations

| Abbreviation | Expansion |
|---|---|
| EIRP | Equivalent Isotropically Radiated Power |
| GNSS | Global Navigation Satellite System |
| KPI | Key Performance Indicator |
| LOS | Line of Sight |
| NOC | Network Operations Centre |
| OSS | Operations Support System |
| PCI | Physical Cell Identity |
| RSRP | Reference Signal Received Power |
| RTT | Round Trip Time |
| SON | Self-Organizing Network |
| TAC | Tracking Area Code |
| VSWR | Voltage Standing Wave Ratio |

## 3 Radio checks

Verify that the PCI does not collide with a neighbour within two tiers. Check that RSRP at the
cell edge stays above -110 dBm in the drive test. Confirm that the TAC matches the AMF.

## 4 Acceptance KPIs

The cell is accepted when the RRC setup success rate exceeds 99 percent and the drop rate stays
below 0.5 percent for seven days.

| KPI | Target |
|---|---|
| RRC setup success rate | > 99 % |
| Call drop rate | < 0.5 % |
| Handover success rate | > 98 % |
"""

SITE_SURVEY_HTML = """<html><head><title>Site survey procedure</title></head><body>
<h1>Site survey procedure</h1>
<h2>1 Purpose</h2>
<p>A site survey confirms that a location can host a gNB: power, transport, antenna mounting and
line of sight to the served area.</p>
<h2>2 Transport check</h2>
<p>Measure the round-trip time to the core over the backhaul. The NG interface needs less than
10 ms to the AMF for the target KPIs. Record the VLAN plan for NG, F1 and management traffic.</p>
<h2>3 Radio check</h2>
<p>Scan the band for external interference before the first transmission. Record the RSRP of
neighbour cells and their PCI values to plan PCI reuse.</p>
</body></html>
"""


def _pdf_bytes(title: str, sections: list[tuple[str, list[str]]]) -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table

    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, title=title, author="Example Vendor",
                            invariant=1)  # invariant: no timestamps, reproducible bytes
    styles = getSampleStyleSheet()
    story = [Paragraph(title, styles["Title"]), Spacer(1, 12)]
    for heading, paras in sections:
        story.append(Paragraph(heading, styles["Heading2"]))
        for p in paras:
            story.append(Paragraph(p, styles["BodyText"]))
        story.append(Spacer(1, 6))
    story.append(Paragraph("Table 4-1: Alarm list", styles["BodyText"]))
    story.append(Table([["Alarm", "Meaning"], ["ALM-2041", "NG setup failure"],
                        ["ALM-3307", "F1 link down"]]))
    doc.build(story)
    return buf.getvalue()


def write_sample_corpus(dest: str | os.PathLike) -> Path:
    """Write the sample corpus into ``dest`` (created atomically; an existing one is kept)."""
    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    with staged_dir(dest, on_exists="keep") as tmp:
        for doc in spec_documents():
            (tmp / f"{doc.stem}.zip").write_bytes(zip_bytes(f"{doc.stem}.docx", _docx_bytes(doc)))
        (tmp / "vendor-gnb-configuration-guide.pdf").write_bytes(
            _pdf_bytes("Example gNB Configuration Guide", VENDOR_GUIDE))
        (tmp / "operator-rollout-notes.md").write_text(OPERATOR_NOTES, encoding="utf-8")
        (tmp / "site-survey-procedure.html").write_text(SITE_SURVEY_HTML, encoding="utf-8")
    return dest


# Exposed for tests that build their own variants.
docx_bytes = _docx_bytes
pdf_bytes = _pdf_bytes
