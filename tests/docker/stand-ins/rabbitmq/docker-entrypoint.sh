#!/bin/bash
# Starts Debian's RabbitMQ as rabbitmq:3-management does, for what docker-compose.yml relies on:
# RABBITMQ_DEFAULT_USER and RABBITMQ_DEFAULT_PASS make the first user on a fresh node, AMQP on
# 5672 and the management plugin on 15672 on every address, the node named rabbit@<hostname>
# with its data in /var/lib/rabbitmq, the log on stdout, and `rabbitmq-diagnostics -q ping`
# as the health probe (Debian's wrapper runs it as the rabbitmq user, with the node's cookie).
set -euo pipefail

if [[ "${1:-}" != "rabbitmq-server" ]]; then
    exec "$@"
fi

{
    echo "listeners.tcp.default = 5672"
    echo "management.tcp.port = 15672"
    echo "loopback_users.guest = false"
    echo "log.console = true"
    echo "log.console.level = info"
    echo "log.file = false"
    if [[ -n "${RABBITMQ_DEFAULT_USER:-}" ]]; then
        echo "default_user = $RABBITMQ_DEFAULT_USER"
    fi
    if [[ -n "${RABBITMQ_DEFAULT_PASS:-}" ]]; then
        echo "default_pass = $RABBITMQ_DEFAULT_PASS"
    fi
} >/etc/rabbitmq/rabbitmq.conf
chown rabbitmq:rabbitmq /etc/rabbitmq/rabbitmq.conf
chmod 0600 /etc/rabbitmq/rabbitmq.conf

# A fresh volume, or one made by another image: the data belongs to rabbitmq.
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq

export HOME=/var/lib/rabbitmq
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server
