#!/usr/bin/env bash
# Debian packages the tests drive for real: export interop (named-checkzone, unbound-checkconf, dnsmasq, squid),
# the DNS benchmark peer (dnsperf, dnsmasq), Prometheus (promtool and the server), the browser test (chromium,
# chromedriver), network namespaces (iproute2), nft for the nftables export, rsyslog (the SIEM shipper config), dig
# (bind9-dnsutils), which the `serve` summary tells users to try, the encrypted-DNS clients and peers (kdig from
# knot-dnsutils, dnsdist), the DHCP lease test's server and client (kea-dhcp4-server, busybox udhcpc), and certutil
# (libnss3-tools), which installs the mitmproxy CA in the block-page test's Chromium NSS store.
# Installed only when one is missing.
set -euo pipefail
packages=(bind9-utils bind9 unbound dnsmasq-base squid dnsperf prometheus chromium chromium-driver iproute2 nftables curl rsyslog rsyslog-elasticsearch bind9-dnsutils knot-dnsutils dnsdist kea-dhcp4-server busybox libnss3-tools)
tools=(named-checkzone named unbound-checkconf unbound dnsmasq squid dnsperf promtool prometheus chromium chromedriver ip nft curl rsyslogd dig kdig dnsdist kea-dhcp4 busybox certutil)
missing=()
for t in "${tools[@]}"; do
  command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || missing+=("$t")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "system-deps: missing ${missing[*]}; run as root (or: sudo apt-get install ${packages[*]}); tests that need them are skipped" >&2
  exit 0
fi
echo "system-deps: installing ${packages[*]} (missing: ${missing[*]})" >&2
# Package scripts must not start daemons (dnsmasq/unbound/named would take port 53 on this machine).
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null
[ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
exit 0
