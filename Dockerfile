# Debian's apache2 with mod_lbmethod_rs, built in the image against that same apache2.
#
#   docker build -t mod-lbmethod-rs .
#   docker run --rm -p 8080:80 mod-lbmethod-rs
#   curl http://127.0.0.1:8080/            # answered by app1, app2 or app3 in a 1:2:3 ratio
#
# The site is httpd-conf/example.conf with its members pointed at five small demo backends
# that the same apache2 serves on 127.0.0.1:8081-8085 (demo-backends.conf below). For real
# use, mount or copy your own site over /etc/apache2/sites-available/lbmethod-rs-example.conf
# with your application servers as members.
# The status page and balancer-manager answer local requests only:
#   docker exec <container> curl -s 'http://127.0.0.1/lb-status?format=json'
FROM debian:bookworm

# The packages, through the same script CI and developers run (it runs apt-get update).
COPY scripts/setup.sh /src/scripts/setup.sh
RUN bash /src/scripts/setup.sh --no-rust && rm -rf /var/lib/apt/lists/*

# Rust, installed by rustup as docs/install.md says.
ENV PATH=/root/.cargo/bin:$PATH
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal

# The sources (not target/: a local build would only bloat the context).
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY include ./include
COPY src ./src
COPY benches ./benches
COPY tests ./tests
COPY harness ./harness
COPY scripts ./scripts
COPY httpd-conf ./httpd-conf

# The same build as CI and scripts/demo.sh, then the same install as on any Debian machine:
# the module into $(apxs -q LIBEXECDIR), the .load/.conf pair into mods-available.
RUN cargo build --release
RUN scripts/install.sh

# Enable it as an admin would, and replace the default site by the example site.
RUN a2enmod proxy_balancer proxy_http lbmethod_rs \
 && a2dissite 000-default \
 && sed -e 's#http://10\.0\.0\.1\([1-4]\):8080#http://127.0.0.1:808\1#' \
        -e 's#http://10\.0\.1\.11:8080#http://127.0.0.1:8085#' \
        -e 's#ServerName app\.example\.com#ServerName localhost#' \
        httpd-conf/example.conf > /etc/apache2/sites-available/lbmethod-rs-example.conf \
 && for n in 1 2 3 4 5; do \
        mkdir -p /var/www/demo-backends/app$n \
     && echo "app$n" > /var/www/demo-backends/app$n/index.html \
     && printf 'Listen 127.0.0.1:808%s\n<VirtualHost 127.0.0.1:808%s>\n    DocumentRoot /var/www/demo-backends/app%s\n</VirtualHost>\n' \
            $n $n $n >> /etc/apache2/sites-available/demo-backends.conf; \
    done \
 && a2ensite demo-backends lbmethod-rs-example \
 && ln -sf /proc/self/fd/2 /var/log/apache2/error.log \
 && ln -sf /proc/self/fd/1 /var/log/apache2/other_vhosts_access.log \
 && apache2ctl -t

EXPOSE 80
CMD ["apache2ctl", "-D", "FOREGROUND"]
