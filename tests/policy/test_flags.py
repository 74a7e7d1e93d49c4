"""extra_args allowlists: one table per tool (and per gobuster mode), each flag with its value check."""

from __future__ import annotations

import pytest

from appliance.errors import ValidationError
from appliance.policy.flags import (
    GOBUSTER_ALLOWED,
    GOBUSTER_DENIED,
    MASSCAN_ALLOWED,
    MASSCAN_DENIED,
    MAX_ARG_LENGTH,
    MAX_EXTRA_ARGS,
    NMAP_ALLOWED,
    NMAP_DENIED,
    check_extra_args,
)
from appliance.policy.model import Policy

TABLES = {
    "nmap": (NMAP_ALLOWED, NMAP_DENIED),
    "masscan": (MASSCAN_ALLOWED, MASSCAN_DENIED),
    "gobuster dir": (GOBUSTER_ALLOWED["dir"], GOBUSTER_DENIED["dir"]),
    "gobuster vhost": (GOBUSTER_ALLOWED["vhost"], GOBUSTER_DENIED["vhost"]),
    "gobuster dns": (GOBUSTER_ALLOWED["dns"], GOBUSTER_DENIED["dns"]),
}


def check(table: str, args: list[str], policy: Policy) -> list[str]:
    allowed, denied = TABLES[table]
    return check_extra_args(args, allowed, denied, policy, table)


def refusal(table: str, args: list[str], policy: Policy) -> str:
    with pytest.raises(ValidationError) as refused:
        check(table, args, policy)
    return refused.value.rule


# --- nmap -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        # safe
        ([], []),
        (["-Pn"], ["-Pn"]),
        (["-Pn", "--open", "--reason", "-r", "-v"], ["-Pn", "--open", "--reason", "-r", "-v"]),
        (["--version-light"], ["--version-light"]),
        (["--version-intensity", "7"], ["--version-intensity", "7"]),
        (["--version-intensity=0"], ["--version-intensity", "0"]),
        (["--max-retries", "2"], ["--max-retries", "2"]),
        (["--max-rate=500"], ["--max-rate", "500"]),
        (["--min-rate", "1", "--max-rate", "1000"], ["--min-rate", "1", "--max-rate", "1000"]),
        (["--scan-delay", "500ms"], ["--scan-delay", "500ms"]),
        (["--max-scan-delay=10s"], ["--max-scan-delay", "10s"]),
    ],
)
def test_nmap_flags_accepted_in_canonical_form(args: list[str], fragment: list[str], lab_policy: Policy) -> None:
    assert check("nmap", args, lab_policy) == fragment


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        # unsafe: file input and output
        pytest.param(["-iL", "/etc/hosts"], "flag_file_io", id="input_list"),
        pytest.param(["-iL/etc/passwd"], "flag_file_io", id="input_list_attached"),
        pytest.param(["-oN", "/tmp/out"], "flag_file_io", id="normal_output"),
        pytest.param(["-oX", "/tmp/out.xml"], "flag_file_io", id="xml_output"),
        pytest.param(["-oX-"], "flag_file_io", id="xml_output_attached_stdout"),
        pytest.param(["-oG", "-"], "flag_file_io", id="grepable_output"),
        pytest.param(["-oA", "/tmp/all"], "flag_file_io", id="all_outputs"),
        pytest.param(["-oS", "/tmp/kiddie"], "flag_file_io", id="script_kiddie_output"),
        pytest.param(["-oM", "/tmp/m"], "flag_file_io", id="machine_output"),
        pytest.param(["--datadir", "/tmp"], "flag_file_io", id="datadir"),
        pytest.param(["--datadir=/tmp/evil"], "flag_file_io", id="datadir_inline"),
        pytest.param(["--resume", "/tmp/scan.gnmap"], "flag_file_io", id="resume"),
        pytest.param(["--excludefile", "/etc/hosts"], "flag_file_io", id="exclude_file"),
        pytest.param(["--servicedb", "/tmp/s"], "flag_file_io", id="service_db"),
        pytest.param(["--versiondb", "/tmp/v"], "flag_file_io", id="version_db"),
        pytest.param(["--stylesheet=http://evil.example/x.xsl"], "flag_file_io", id="stylesheet_url"),
        pytest.param(["--append-output"], "flag_file_io", id="append_output"),
        pytest.param(["--script-updatedb"], "flag_file_io", id="script_updatedb"),
        pytest.param(["--log-errors"], "flag_file_io", id="log_errors"),
        # unsafe: targets the scope check never saw
        pytest.param(["-iR", "100"], "flag_extra_targets", id="random_targets"),
        pytest.param(["-iR100"], "flag_extra_targets", id="random_targets_attached"),
        pytest.param(["--exclude", "10.20.0.5"], "flag_extra_targets", id="exclude_list"),
        pytest.param(["10.20.0.9"], "flag_extra_targets", id="positional_address"),
        pytest.param(["-Pn", "127.0.0.1"], "flag_extra_targets", id="positional_after_switch"),
        pytest.param(["scanme.nmap.org"], "flag_extra_targets", id="positional_hostname"),
        pytest.param(["--max-rate", "10", "8.8.8.8"], "flag_extra_targets", id="positional_after_value"),
        # unsafe: spoofing and evasion
        pytest.param(["-D", "RND:10"], "flag_spoofing_or_evasion", id="decoys"),
        pytest.param(["-D10.0.0.1"], "flag_spoofing_or_evasion", id="decoy_attached"),
        pytest.param(["-S", "10.20.0.9"], "flag_spoofing_or_evasion", id="source_address"),
        pytest.param(["-S10.20.0.9"], "flag_spoofing_or_evasion", id="source_address_attached"),
        pytest.param(["-e", "eth0"], "flag_spoofing_or_evasion", id="interface"),
        pytest.param(["-g", "53"], "flag_spoofing_or_evasion", id="source_port_short"),
        pytest.param(["-g53"], "flag_spoofing_or_evasion", id="source_port_short_attached"),
        pytest.param(["--source-port", "53"], "flag_spoofing_or_evasion", id="source_port"),
        pytest.param(["--spoof-mac", "0"], "flag_spoofing_or_evasion", id="spoof_mac"),
        pytest.param(["--proxies", "socks4://10.20.0.9:1080"], "flag_spoofing_or_evasion", id="proxies"),
        pytest.param(["--proxy", "http://10.20.0.9:8080"], "flag_spoofing_or_evasion", id="proxy"),
        pytest.param(["--data", "deadbeef"], "flag_spoofing_or_evasion", id="data"),
        pytest.param(["--data-string", "x"], "flag_spoofing_or_evasion", id="data_string"),
        pytest.param(["--data-length", "25"], "flag_spoofing_or_evasion", id="data_length"),
        pytest.param(["--ip-options", "R"], "flag_spoofing_or_evasion", id="ip_options"),
        pytest.param(["--ttl", "1"], "flag_spoofing_or_evasion", id="ttl"),
        pytest.param(["--badsum"], "flag_spoofing_or_evasion", id="bad_checksum"),
        pytest.param(["-f"], "flag_spoofing_or_evasion", id="fragment"),
        pytest.param(["-ff"], "flag_spoofing_or_evasion", id="fragment_twice"),
        pytest.param(["--mtu", "8"], "flag_spoofing_or_evasion", id="mtu"),
        # unsafe: scripts and their arguments
        pytest.param(["--script-args", "http.useragent=x"], "flag_script_args", id="script_args"),
        pytest.param(["--script-args=x"], "flag_script_args", id="script_args_inline"),
        pytest.param(["--script-args-file", "/tmp/args"], "flag_script_args", id="script_args_file"),
        pytest.param(["--script-args-file=/tmp/args"], "flag_script_args", id="script_args_file_inline"),
        pytest.param(["--script", "http-brute"], "flag_use_parameter", id="script_selection"),
        pytest.param(["--script=vuln"], "flag_use_parameter", id="script_selection_inline"),
        pytest.param(["-sC"], "flag_use_parameter", id="default_scripts"),
        pytest.param(["-script-args=x"], "flag_not_allowed", id="single_dash_long_option"),
        # unsafe: what tool parameters set
        pytest.param(["-sS"], "flag_use_parameter", id="syn_scan_past_mode_check"),
        pytest.param(["-sU"], "flag_use_parameter", id="udp_scan"),
        pytest.param(["-sV"], "flag_use_parameter", id="version_scan"),
        pytest.param(["-sI", "10.20.0.9"], "flag_use_parameter", id="idle_scan"),
        pytest.param(["-b", "ftp://relay"], "flag_use_parameter", id="ftp_bounce"),
        pytest.param(["-p-"], "flag_use_parameter", id="all_ports"),
        pytest.param(["-p1-65535"], "flag_use_parameter", id="port_list_attached"),
        pytest.param(["-F"], "flag_use_parameter", id="fast_ports"),
        pytest.param(["--top-ports", "65535"], "flag_use_parameter", id="top_ports"),
        pytest.param(["-T5"], "flag_use_parameter", id="insane_timing"),
        pytest.param(["-A"], "flag_use_parameter", id="aggressive"),
        pytest.param(["-O"], "flag_use_parameter", id="os_detection"),
        pytest.param(["-6"], "flag_use_parameter", id="ipv6_switch"),
        pytest.param(["--host-timeout", "0"], "flag_use_parameter", id="host_timeout"),
        # unsafe: leaving the target, resolving names, privilege model
        pytest.param(["--traceroute"], "flag_leaves_scope", id="traceroute"),
        pytest.param(["-R"], "flag_dns", id="reverse_dns_always"),
        pytest.param(["--dns-servers", "8.8.8.8"], "flag_dns", id="dns_servers"),
        pytest.param(["--dns-servers=8.8.8.8"], "flag_dns", id="dns_servers_inline"),
        pytest.param(["--system-dns"], "flag_dns", id="system_dns"),
        pytest.param(["--resolve-all"], "flag_dns", id="resolve_all"),
        pytest.param(["--privileged"], "flag_privilege", id="privileged"),
        pytest.param(["--unprivileged"], "flag_privilege", id="unprivileged"),
        pytest.param(["--send-eth"], "flag_privilege", id="send_eth"),
        pytest.param(["--send-ip"], "flag_privilege", id="send_ip"),
        # unsafe: the host group size is the policy's (it decides when findings arrive)
        pytest.param(["--max-hostgroup", "1024"], "flag_hostgroup_from_caller", id="max_hostgroup"),
        pytest.param(["--max-hostgroup=1"], "flag_hostgroup_from_caller", id="max_hostgroup_inline"),
        pytest.param(["--min-hostgroup", "4096"], "flag_hostgroup_from_caller", id="min_hostgroup"),
        pytest.param(["--max_hostgroup", "1024"], "flag_hostgroup_from_caller", id="max_hostgroup_underscore"),
        pytest.param(["--min_hostgroup=4096"], "flag_hostgroup_from_caller", id="min_hostgroup_underscore"),
        # unsafe: option injection through values
        pytest.param(["--max-rate", "-iL"], "flag_value_invalid", id="option_as_rate_value"),
        pytest.param(["--max-rate=-iL"], "flag_value_invalid", id="option_as_inline_value"),
        pytest.param(["--max-retries", "--script=vuln"], "flag_value_invalid", id="script_as_retries_value"),
        pytest.param(["--scan-delay", "-D"], "flag_value_invalid", id="decoy_as_delay_value"),
        pytest.param(["--version-intensity", "-oN"], "flag_value_invalid", id="output_as_intensity_value"),
        # unsafe: values over the policy cap or malformed
        pytest.param(["--max-rate", "1001"], "flag_value_invalid", id="max_rate_over_policy_cap"),
        pytest.param(["--min-rate", "100000"], "flag_value_invalid", id="min_rate_over_policy_cap"),
        pytest.param(["--max-retries", "11"], "flag_value_invalid", id="retries_over_cap"),
        pytest.param(["--version-intensity", "10"], "flag_value_invalid", id="intensity_over_cap"),
        pytest.param(["--scan-delay", "11s"], "flag_value_invalid", id="delay_over_cap"),
        pytest.param(["--max-scan-delay", "10001ms"], "flag_value_invalid", id="delay_ms_over_cap"),
        pytest.param(["--max-rate", "0"], "flag_value_invalid", id="zero_rate"),
        pytest.param(["--max-rate", "01000"], "flag_value_invalid", id="leading_zero_rate"),
        pytest.param(["--max-rate", "1e3"], "flag_value_invalid", id="exponent_rate"),
        pytest.param(["--max-rate", " 500"], "flag_value_invalid", id="space_padded_rate"),
        pytest.param(["--max-rate", "\uff11\uff10"], "flag_value_invalid", id="fullwidth_digits_rate"),
        pytest.param(["--scan-delay", "5m"], "flag_value_invalid", id="delay_in_minutes"),
        pytest.param(["--scan-delay", "1.5s"], "flag_value_invalid", id="fractional_delay"),
        pytest.param(["--max-rate"], "flag_value_invalid", id="missing_value"),
        pytest.param(["-Pn=yes"], "flag_value_invalid", id="switch_with_value"),
        # unsafe: shape of the list itself
        pytest.param(["-Pn", "-Pn"], "flag_repeated", id="repeated_switch"),
        pytest.param(["--max-rate", "10", "--max-rate=20"], "flag_repeated", id="repeated_value_flag"),
        pytest.param(["-Pn\n-iL"], "flag_value_invalid", id="newline_inside_item"),
        pytest.param(["-Pn\x00"], "flag_value_invalid", id="nul_inside_item"),
        pytest.param(["-" + "v" * MAX_ARG_LENGTH], "flag_value_invalid", id="item_too_long"),
        pytest.param(["-v"] * (MAX_EXTRA_ARGS + 1), "flag_too_many", id="too_many_items"),
        pytest.param(["-vv"], "flag_not_allowed", id="unknown_verbosity"),
        pytest.param(["--packet-trace"], "flag_not_allowed", id="unknown_flag"),
        pytest.param(["-"], "flag_not_allowed", id="lone_dash"),
        pytest.param(["--"], "flag_not_allowed", id="end_of_options"),
    ],
)
def test_nmap_flags_refused(args: list[str], rule: str, lab_policy: Policy) -> None:
    assert refusal("nmap", args, lab_policy) == rule


# --- masscan ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        # safe
        ([], []),
        (["--wait", "3"], ["--wait", "3"]),
        (["--wait", "5"], ["--wait", "5"]),  # exactly the policy's max_wait_seconds
        (["--retries=2"], ["--retries", "2"]),
        (["--wait", "0", "--retries", "3"], ["--wait", "0", "--retries", "3"]),
        (["--shard", "1/2", "--seed", "7"], ["--shard", "1/2", "--seed", "7"]),
        (["--shard=256/256", "--seed=0"], ["--shard", "256/256", "--seed", "0"]),
    ],
)
def test_masscan_flags_accepted_in_canonical_form(args: list[str], fragment: list[str], lab_policy: Policy) -> None:
    assert check("masscan", args, lab_policy) == fragment


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        # unsafe: file input and output
        pytest.param(["-c", "/etc/masscan/masscan.conf"], "flag_file_io", id="config_file"),
        pytest.param(["-c/etc/passwd"], "flag_file_io", id="config_file_attached"),
        pytest.param(["--conf", "/tmp/x.conf"], "flag_file_io", id="config_file_long"),
        pytest.param(["--readscan", "/tmp/scan.bin"], "flag_file_io", id="readscan"),
        pytest.param(["--pcap", "/tmp/out.pcap"], "flag_file_io", id="pcap"),
        pytest.param(["-oX", "/tmp/out.xml"], "flag_file_io", id="xml_output"),
        pytest.param(["-oJ", "-"], "flag_file_io", id="json_output"),
        pytest.param(["-oL", "/tmp/l"], "flag_file_io", id="list_output"),
        pytest.param(["-oG", "/tmp/g"], "flag_file_io", id="grepable_output"),
        pytest.param(["-oB", "/tmp/b"], "flag_file_io", id="binary_output"),
        pytest.param(["-oD", "/tmp/d"], "flag_file_io", id="ndjson_output"),
        pytest.param(["-oU", "/tmp/u"], "flag_file_io", id="unicornscan_output"),
        pytest.param(["--output-filename", "/tmp/o"], "flag_file_io", id="output_filename"),
        pytest.param(["--output-format=xml"], "flag_file_io", id="output_format"),
        pytest.param(["-iL", "/etc/hosts"], "flag_file_io", id="input_list"),
        pytest.param(["--includefile", "/tmp/in"], "flag_file_io", id="include_file"),
        pytest.param(["--excludefile", "/tmp/ex"], "flag_file_io", id="exclude_file"),
        pytest.param(["--resume", "paused.conf"], "flag_file_io", id="resume"),
        pytest.param(["--echo"], "flag_file_io", id="echo_config"),
        # unsafe: targets and spoofing
        pytest.param(["--range", "0.0.0.0/0"], "flag_extra_targets", id="range"),
        pytest.param(["--range=0.0.0.0/0"], "flag_extra_targets", id="range_inline"),
        pytest.param(["--exclude", "10.20.0.5"], "flag_extra_targets", id="exclude"),
        pytest.param(["0.0.0.0/0"], "flag_extra_targets", id="positional_block"),
        pytest.param(["--source-ip", "10.20.0.9"], "flag_spoofing_or_evasion", id="source_ip"),
        pytest.param(["--source-port", "53"], "flag_spoofing_or_evasion", id="source_port"),
        pytest.param(["--adapter-ip", "10.20.0.9"], "flag_spoofing_or_evasion", id="adapter_ip"),
        pytest.param(["--adapter-mac", "00:11:22:33:44:55"], "flag_spoofing_or_evasion", id="adapter_mac"),
        pytest.param(["--router-mac", "00:11:22:33:44:55"], "flag_spoofing_or_evasion", id="router_mac"),
        pytest.param(["--router-ip", "10.20.0.1"], "flag_spoofing_or_evasion", id="router_ip"),
        pytest.param(["--adapter", "eth0"], "flag_spoofing_or_evasion", id="adapter"),
        pytest.param(["-e", "eth0"], "flag_spoofing_or_evasion", id="interface"),
        pytest.param(["--spoof"], "flag_spoofing_or_evasion", id="spoof"),
        pytest.param(["--banners"], "flag_spoofing_or_evasion", id="banners"),
        # unsafe: what tool parameters set
        pytest.param(["--rate", "100000"], "flag_use_parameter", id="rate_past_budget"),
        pytest.param(["--rate=100000"], "flag_use_parameter", id="rate_inline"),
        pytest.param(["--max-rate", "100000"], "flag_use_parameter", id="max_rate"),
        pytest.param(["-p", "0-65535"], "flag_use_parameter", id="ports"),
        pytest.param(["-p0-65535"], "flag_use_parameter", id="ports_attached"),
        pytest.param(["--ports", "1-65535"], "flag_use_parameter", id="ports_long"),
        # unsafe: values
        pytest.param(["--wait", "6"], "flag_value_invalid", id="wait_over_policy_cap"),
        pytest.param(["--wait", "3600"], "flag_value_invalid", id="wait_an_hour"),
        pytest.param(["--retries", "4"], "flag_value_invalid", id="retries_over_cap"),
        pytest.param(["--wait", "--echo"], "flag_value_invalid", id="option_as_wait_value"),
        pytest.param(["--wait", "1", "--wait", "2"], "flag_repeated", id="repeated_wait"),
        pytest.param(["--shard", "3/2"], "flag_value_invalid", id="shard_past_its_count"),
        pytest.param(["--shard", "0/2"], "flag_value_invalid", id="shard_zero"),
        pytest.param(["--shard", "1/257"], "flag_value_invalid", id="shard_count_over_cap"),
        pytest.param(["--shard", "1/2,10.0.0.0/8"], "flag_value_invalid", id="shard_smuggling_a_range"),
        pytest.param(["--shard", "1"], "flag_value_invalid", id="shard_without_count"),
        pytest.param(["--shards", "1/2"], "flag_not_allowed", id="shard_other_spelling"),
        pytest.param(["--seed", "-1"], "flag_value_invalid", id="seed_negative"),
        pytest.param(["--shard", "1/2", "--shard", "2/2"], "flag_repeated", id="two_shards"),
        pytest.param(["--ping"], "flag_not_allowed", id="ping_sweep"),
        pytest.param(["-Pn"], "flag_not_allowed", id="nmap_flag"),
    ],
)
def test_masscan_flags_refused(args: list[str], rule: str, lab_policy: Policy) -> None:
    assert refusal("masscan", args, lab_policy) == rule


# --- gobuster ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "args", "fragment"),
    [
        # safe
        ("gobuster dir", ["-k"], ["-k"]),
        ("gobuster dir", ["--no-tls-validation"], ["--no-tls-validation"]),
        ("gobuster dir", ["-s", "200,301-302"], ["-s", "200,301-302"]),
        ("gobuster dir", ["--status-codes=200"], ["--status-codes", "200"]),
        ("gobuster dir", ["-b", "404"], ["-b", "404"]),
        ("gobuster dir", ["-a", "Mozilla/5.0 (lab scan)"], ["-a", "Mozilla/5.0 (lab scan)"]),
        ("gobuster dir", ["--timeout", "10s", "--delay", "500ms"], ["--timeout", "10s", "--delay", "500ms"]),
        ("gobuster dir", ["--retry", "--retry-attempts", "3"], ["--retry", "--retry-attempts", "3"]),
        ("gobuster dir", ["--exclude-length", "0,1234"], ["--exclude-length", "0,1234"]),
        ("gobuster dir", ["-f", "-d", "--random-agent"], ["-f", "-d", "--random-agent"]),
        ("gobuster vhost", ["-k", "--timeout", "5s"], ["-k", "--timeout", "5s"]),
        ("gobuster dns", ["--wildcard", "--timeout", "10s"], ["--wildcard", "--timeout", "10s"]),
        ("gobuster dns", ["--delay=1s"], ["--delay", "1s"]),
    ],
)
def test_gobuster_flags_accepted_in_canonical_form(
    table: str, args: list[str], fragment: list[str], lab_policy: Policy
) -> None:
    assert check(table, args, lab_policy) == fragment


@pytest.mark.parametrize(
    ("table", "args", "rule"),
    [
        # unsafe: redirects and resolvers
        pytest.param("gobuster dir", ["-r"], "flag_follows_redirects", id="dir_follow_redirect"),
        pytest.param("gobuster dir", ["--follow-redirect"], "flag_follows_redirects", id="dir_follow_redirect_long"),
        pytest.param("gobuster vhost", ["-r"], "flag_follows_redirects", id="vhost_follow_redirect"),
        pytest.param("gobuster dns", ["-r", "8.8.8.8"], "flag_resolver_from_caller", id="dns_resolver"),
        pytest.param("gobuster dns", ["-r8.8.8.8:53"], "flag_resolver_from_caller", id="dns_resolver_attached"),
        pytest.param("gobuster dns", ["--resolver", "1.1.1.1"], "flag_resolver_from_caller", id="dns_resolver_long"),
        pytest.param("gobuster dns", ["--resolver=1.1.1.1"], "flag_resolver_from_caller", id="dns_resolver_inline"),
        pytest.param("gobuster dns", ["-d", "evil.example"], "flag_extra_targets", id="dns_second_domain"),
        pytest.param("gobuster dns", ["-devil.example"], "flag_extra_targets", id="dns_second_domain_attached"),
        # unsafe: file input and output, proxies
        pytest.param("gobuster dir", ["-o", "/tmp/out"], "flag_file_io", id="output"),
        pytest.param("gobuster dir", ["-o/etc/cron.d/x"], "flag_file_io", id="output_attached"),
        pytest.param("gobuster dir", ["--output=/tmp/out"], "flag_file_io", id="output_inline"),
        pytest.param("gobuster dir", ["-p", "/tmp/pattern"], "flag_file_io", id="pattern_file"),
        pytest.param("gobuster dir", ["--pattern", "/tmp/pattern"], "flag_file_io", id="pattern_file_long"),
        pytest.param("gobuster dir", ["-X", "/tmp/ext"], "flag_file_io", id="extensions_file"),
        pytest.param("gobuster dir", ["--extensions-file", "/tmp/ext"], "flag_file_io", id="extensions_file_long"),
        pytest.param("gobuster dir", ["--client-cert-pem", "/tmp/c"], "flag_file_io", id="client_cert"),
        pytest.param("gobuster dir", ["--client-cert-pem-key", "/tmp/k"], "flag_file_io", id="client_key"),
        pytest.param("gobuster dir", ["--client-cert-p12", "/tmp/p"], "flag_file_io", id="client_p12"),
        pytest.param("gobuster dir", ["--client-cert-p12-password", "x"], "flag_file_io", id="client_p12_password"),
        pytest.param("gobuster dns", ["-o", "/tmp/out"], "flag_file_io", id="dns_output"),
        pytest.param("gobuster dir", ["--proxy", "http://10.20.0.9:8080"], "flag_spoofing_or_evasion", id="proxy"),
        pytest.param("gobuster dns", ["--proxy", "socks5://x"], "flag_spoofing_or_evasion", id="dns_proxy"),
        # unsafe: what tool parameters set
        pytest.param("gobuster dir", ["-w", "/etc/passwd"], "flag_use_parameter", id="wordlist_path"),
        pytest.param("gobuster dir", ["--wordlist=/etc/shadow"], "flag_use_parameter", id="wordlist_path_inline"),
        pytest.param("gobuster dir", ["-t", "200"], "flag_use_parameter", id="threads"),
        pytest.param("gobuster dir", ["-t200"], "flag_use_parameter", id="threads_attached"),
        pytest.param("gobuster dir", ["-x", "php"], "flag_use_parameter", id="extensions"),
        pytest.param("gobuster dir", ["-u", "http://evil.example/"], "flag_use_parameter", id="second_url"),
        pytest.param("gobuster dir", ["--url=http://evil.example/"], "flag_use_parameter", id="second_url_inline"),
        pytest.param("gobuster vhost", ["--domain", "evil.example"], "flag_use_parameter", id="vhost_domain"),
        pytest.param("gobuster vhost", ["--append-domain"], "flag_use_parameter", id="vhost_append_domain"),
        pytest.param("gobuster dir", ["http://evil.example/"], "flag_extra_targets", id="positional_url"),
        # unsafe: not on the allowlist
        pytest.param("gobuster dir", ["-H", "Host: evil.example"], "flag_not_allowed", id="host_header"),
        pytest.param("gobuster dir", ["-c", "session=1"], "flag_not_allowed", id="cookies"),
        pytest.param("gobuster dir", ["-U", "admin", "-P", "x"], "flag_not_allowed", id="basic_auth"),
        pytest.param("gobuster dir", ["-m", "DELETE"], "flag_not_allowed", id="http_method"),
        pytest.param("gobuster vhost", ["-d"], "flag_not_allowed", id="vhost_discover_backup"),
        pytest.param("gobuster dns", ["-k"], "flag_not_allowed", id="dns_tls_switch"),
        pytest.param("gobuster dns", ["-s", "200"], "flag_not_allowed", id="dns_status_codes"),
        pytest.param("gobuster dir", ["-kf"], "flag_not_allowed", id="combined_switches"),
        # unsafe: values
        pytest.param("gobuster dir", ["--timeout", "61s"], "flag_value_invalid", id="timeout_over_cap"),
        pytest.param("gobuster dir", ["--delay", "6s"], "flag_value_invalid", id="delay_over_cap"),
        pytest.param("gobuster dns", ["--timeout", "11s"], "flag_value_invalid", id="dns_timeout_over_cap"),
        pytest.param("gobuster dir", ["--retry-attempts", "4"], "flag_value_invalid", id="retry_attempts_over_cap"),
        pytest.param("gobuster dir", ["-s", "99"], "flag_value_invalid", id="status_code_out_of_range"),
        pytest.param("gobuster dir", ["-s", "200,abc"], "flag_value_invalid", id="status_code_text"),
        pytest.param("gobuster dir", ["--exclude-length", "-1"], "flag_value_invalid", id="negative_length"),
        pytest.param("gobuster dir", ["-a", "-o"], "flag_value_invalid", id="option_as_user_agent"),
        pytest.param("gobuster dir", ["-a", ""], "flag_value_invalid", id="empty_user_agent"),
        pytest.param("gobuster dir", ["-a", "x" * 201], "flag_value_invalid", id="user_agent_too_long"),
        pytest.param("gobuster dir", ["--timeout", "-o"], "flag_value_invalid", id="option_as_timeout"),
        pytest.param("gobuster dir", ["-k", "--no-tls-validation"], "flag_repeated", id="switch_under_two_names"),
        pytest.param("gobuster dir", ["-k=false"], "flag_value_invalid", id="switch_with_value"),
    ],
)
def test_gobuster_flags_refused(table: str, args: list[str], rule: str, lab_policy: Policy) -> None:
    assert refusal(table, args, lab_policy) == rule


@pytest.mark.parametrize(
    ("table", "args", "rule"),
    [
        # The same letter means different things per tool and per gobuster mode.
        pytest.param("masscan", ["-c", "x"], "flag_file_io", id="masscan_c_is_a_config_file"),
        pytest.param("gobuster dir", ["-c", "x"], "flag_not_allowed", id="gobuster_c_is_cookies"),
        pytest.param("gobuster dir", ["-r"], "flag_follows_redirects", id="gobuster_dir_r_follows_redirects"),
        pytest.param("gobuster dns", ["-r"], "flag_resolver_from_caller", id="gobuster_dns_r_names_a_resolver"),
        pytest.param("gobuster dns", ["-d", "x"], "flag_extra_targets", id="gobuster_dns_d_is_a_domain"),
        pytest.param("nmap", ["-e", "eth0"], "flag_spoofing_or_evasion", id="nmap_e_is_an_interface"),
        pytest.param("masscan", ["-e", "eth0"], "flag_spoofing_or_evasion", id="masscan_e_is_an_interface"),
    ],
)
def test_same_letter_is_judged_per_tool(table: str, args: list[str], rule: str, lab_policy: Policy) -> None:
    assert refusal(table, args, lab_policy) == rule


@pytest.mark.parametrize(("table", "args"), [("nmap", ["-r"]), ("gobuster dir", ["-d"])])
def test_same_letter_allowed_where_it_is_harmless(table: str, args: list[str], lab_policy: Policy) -> None:
    assert check(table, args, lab_policy) == args


def test_rate_cap_follows_the_policy(lab_policy: Policy) -> None:
    raised = lab_policy.model_copy(
        update={
            "tools": lab_policy.tools.model_copy(
                update={"nmap_scan": lab_policy.tools.nmap_scan.model_copy(update={"max_rate": 5000})}
            )
        }
    )

    assert check("nmap", ["--max-rate", "5000"], raised) == ["--max-rate", "5000"]
    assert refusal("nmap", ["--max-rate", "5000"], lab_policy) == "flag_value_invalid"
