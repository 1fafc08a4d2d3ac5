// Cross-object rules a schema cannot see: references resolve inside the
// rendered set, selectors select something, and chatd's own invariants
// (gateway ids fit chat-receive, the drain fits the grace period, the Kafka
// quorum matches the broker count). Returns a list of problem strings.

const key = (kind, name) => `${kind}/${name}`;

function podSpecs(objs) {
  const out = [];
  for (const o of objs) {
    if (["Deployment", "StatefulSet", "DaemonSet"].includes(o.kind))
      out.push({ owner: o, labels: o.spec?.template?.metadata?.labels ?? {}, spec: o.spec?.template?.spec ?? {} });
    else if (o.kind === "Job")
      out.push({ owner: o, labels: o.spec?.template?.metadata?.labels ?? {}, spec: o.spec?.template?.spec ?? {} });
  }
  return out;
}

const matches = (selector, labels) =>
  selector && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);

function envOf(c) {
  return Object.fromEntries((c.env ?? []).filter((e) => "value" in e).map((e) => [e.name, e.value]));
}

export function checkChatd(objs, external) {
  const errs = [];
  const have = new Set(external);
  const seen = new Set();
  for (const o of objs) {
    const k = key(o.kind, o.metadata?.name);
    if (seen.has(k)) errs.push(`${k}: defined twice`);
    seen.add(k);
    have.add(k);
  }
  const need = (what, kind, name) => {
    if (name && !have.has(key(kind, name))) errs.push(`${what}: refers to ${kind}/${name}, which is not in the render`);
  };
  const pods = podSpecs(objs);

  // references from pod specs
  for (const { owner, spec } of pods) {
    const who = key(owner.kind, owner.metadata.name);
    const claims = new Set((owner.spec?.volumeClaimTemplates ?? []).map((t) => t.metadata?.name));
    for (const c of [...(spec.containers ?? []), ...(spec.initContainers ?? [])]) {
      for (const ef of c.envFrom ?? []) {
        need(who, "ConfigMap", ef.configMapRef?.name);
        need(who, "Secret", ef.secretRef?.name);
      }
      for (const e of c.env ?? []) {
        need(who, "ConfigMap", e.valueFrom?.configMapKeyRef?.name);
        need(who, "Secret", e.valueFrom?.secretKeyRef?.name);
      }
      const vols = new Set([...(spec.volumes ?? []).map((v) => v.name), ...claims]);
      for (const m of c.volumeMounts ?? [])
        if (!vols.has(m.name)) errs.push(`${who}: container ${c.name} mounts undefined volume ${m.name}`);
    }
    for (const v of spec.volumes ?? []) {
      need(who, "ConfigMap", v.configMap?.name);
      need(who, "Secret", v.secret?.secretName);
      need(who, "PersistentVolumeClaim", v.persistentVolumeClaim?.claimName);
    }
    need(who, "ServiceAccount", spec.serviceAccountName);
  }

  for (const o of objs) {
    const who = key(o.kind, o.metadata.name);
    if (o.kind === "Service" && o.spec?.selector) {
      if (!pods.some((p) => matches(o.spec.selector, p.labels)))
        errs.push(`${who}: selector ${JSON.stringify(o.spec.selector)} selects no pod template`);
    }
    if (o.kind === "StatefulSet") {
      const svc = objs.find((s) => s.kind === "Service" && s.metadata.name === o.spec.serviceName);
      if (!svc) errs.push(`${who}: serviceName ${o.spec.serviceName} is not a Service in the render`);
      else if (svc.spec.clusterIP !== "None") errs.push(`${who}: service ${o.spec.serviceName} is not headless`);
    }
    if (o.kind === "PodDisruptionBudget" && !pods.some((p) => matches(o.spec?.selector?.matchLabels, p.labels)))
      errs.push(`${who}: selector selects no pod template`);
    if (o.kind === "HorizontalPodAutoscaler") {
      const t = o.spec.scaleTargetRef;
      need(who, t.kind, t.name);
    }
    if (o.kind === "RoleBinding" || o.kind === "ClusterRoleBinding") {
      need(who, o.roleRef.kind, o.roleRef.name);
      for (const s of o.subjects ?? []) if (s.kind === "ServiceAccount") need(who, "ServiceAccount", s.name);
    }
    if (["Deployment", "StatefulSet"].includes(o.kind) &&
        !matches(o.spec?.selector?.matchLabels, o.spec?.template?.metadata?.labels ?? {}))
      errs.push(`${who}: spec.selector does not match the pod template's labels`);
  }

  // chatd invariants
  const conf = objs.find((o) => o.kind === "ConfigMap" && o.data?.CHATD_RECEIVE_PARTITIONS);
  if (!conf) {
    errs.push("no ConfigMap with CHATD_RECEIVE_PARTITIONS (chatd's config)");
    return errs;
  }
  const recv = Number(conf.data.CHATD_RECEIVE_PARTITIONS);
  const send = Number(conf.data.CHATD_SEND_PARTITIONS);
  const drain = Number(conf.data.CHATD_DRAIN ?? 10);
  if (!(recv > 0 && send > 0)) errs.push(`${conf.metadata.name}: partition counts must be positive numbers`);
  // The admin listener: /metrics off the client port (docs/DEPLOY.md, "Ports").
  const adminPort = Number((conf.data.CHATD_ADMIN_LISTEN ?? "").split(":").pop());
  if (!(adminPort > 0)) errs.push(`${conf.metadata.name}: CHATD_ADMIN_LISTEN must be HOST:PORT (/metrics off the client port)`);
  const chatdPods = pods.filter((p) => (p.spec.containers ?? []).some((c) => (c.args ?? []).some((a) => a.startsWith("--role="))));
  if (chatdPods.length === 0) errs.push("no chatd workload (container with --role=) in the render");
  for (const { owner, spec } of chatdPods) {
    const who = key(owner.kind, owner.metadata.name);
    const c = spec.containers.find((x) => (x.args ?? []).some((a) => a.startsWith("--role=")));
    const role = c.args.find((a) => a.startsWith("--role=")).slice(7);
    const grace = spec.terminationGracePeriodSeconds ?? 30;
    // drain, then producer flush (<= 5 s) and purge (1 s), with a margin
    if (grace < drain + 10) errs.push(`${who}: terminationGracePeriodSeconds ${grace} < CHATD_DRAIN ${drain} + 10`);
    if (c.readinessProbe?.httpGet?.path !== "/readyz") errs.push(`${who}: readiness probe must be GET /readyz`);
    if (c.livenessProbe?.httpGet?.path !== "/healthz") errs.push(`${who}: liveness probe must be GET /healthz`);
    if (adminPort > 0) {
      const named = Object.fromEntries((c.ports ?? []).map((p) => [p.name, p.containerPort]));
      const portOf = (p) => (typeof p === "string" ? named[p] : p);
      if (!Object.values(named).includes(adminPort) && !(c.ports ?? []).some((p) => p.containerPort === adminPort))
        errs.push(`${who}: no containerPort ${adminPort} (CHATD_ADMIN_LISTEN)`);
      for (const probe of ["startupProbe", "livenessProbe", "readinessProbe"])
        if (c[probe] && portOf(c[probe].httpGet?.port) !== adminPort)
          errs.push(`${who}: ${probe} must use the admin port ${adminPort}`);
      const ann = owner.spec.template.metadata?.annotations ?? {};
      if (ann["prometheus.io/scrape"] === "true" && Number(ann["prometheus.io/port"]) !== adminPort)
        errs.push(`${who}: prometheus.io/port ${ann["prometheus.io/port"]} is not the admin port ${adminPort}`);
    }
    if (!(c.envFrom ?? []).some((e) => e.configMapRef?.name === conf.metadata.name))
      errs.push(`${who}: does not take its settings from ConfigMap ${conf.metadata.name}`);
    if (role === "gateway") {
      if (owner.kind !== "StatefulSet") errs.push(`${who}: gateways must be a StatefulSet (ordinal = gateway id)`);
      if ((owner.spec.replicas ?? 1) > recv)
        errs.push(`${who}: ${owner.spec.replicas} gateways but chat-receive has ${recv} partitions (ids 0..${recv - 1})`);
      if (!(c.env ?? []).some((e) => e.name === "CHATD_JWT_SECRET" && e.valueFrom?.secretKeyRef))
        errs.push(`${who}: CHATD_JWT_SECRET must come from a Secret`);
    }
    if (role === "classifier") {
      const hpa = objs.find((o) => o.kind === "HorizontalPodAutoscaler" && o.spec.scaleTargetRef.name === owner.metadata.name);
      if (!hpa) errs.push(`${who}: no HorizontalPodAutoscaler`);
      else if (hpa.spec.maxReplicas > send)
        errs.push(`${key("HorizontalPodAutoscaler", hpa.metadata.name)}: maxReplicas ${hpa.spec.maxReplicas} > chat-send partitions ${send} (extra classifiers would idle)`);
    }
    if (!objs.some((o) => o.kind === "PodDisruptionBudget" && matches(o.spec?.selector?.matchLabels, owner.spec.template.metadata.labels)))
      errs.push(`${who}: no PodDisruptionBudget`);
  }

  // No Service reaches the admin port: Prometheus scrapes pods directly.
  for (const o of objs.filter((x) => x.kind === "Service" && x.spec?.selector)) {
    for (const { spec, labels } of chatdPods.filter((p) => matches(o.spec.selector, p.labels))) {
      const c = spec.containers.find((x) => (x.args ?? []).some((a) => a.startsWith("--role=")));
      const named = Object.fromEntries((c.ports ?? []).map((p) => [p.name, p.containerPort]));
      for (const sp of o.spec.ports ?? []) {
        const t = sp.targetPort ?? sp.port;
        if (adminPort > 0 && (typeof t === "string" ? named[t] : t) === adminPort)
          errs.push(`${key("Service", o.metadata.name)}: exposes the admin port ${adminPort} of ${labels["app.kubernetes.io/component"] ?? "chatd"} pods`);
      }
    }
  }

  // Kafka (KRaft): quorum voters = brokers, replication fits
  const kafka = objs.find((o) => o.kind === "StatefulSet" && o.metadata.name === "kafka");
  if (kafka) {
    const env = envOf(kafka.spec.template.spec.containers[0]);
    const n = kafka.spec.replicas ?? 1;
    const voters = (env.KAFKA_CONTROLLER_QUORUM_VOTERS ?? "").split(",").filter(Boolean);
    if (voters.length !== n) errs.push(`StatefulSet/kafka: ${n} replicas but ${voters.length} quorum voters`);
    voters.forEach((v, i) => {
      if (!v.startsWith(`${i}@kafka-${i}.`)) errs.push(`StatefulSet/kafka: voter ${v} is not ${i}@kafka-${i}.…`);
    });
    const rf = Number(env.KAFKA_DEFAULT_REPLICATION_FACTOR ?? 1);
    const isr = Number(env.KAFKA_MIN_INSYNC_REPLICAS ?? 1);
    if (rf > n) errs.push(`StatefulSet/kafka: replication factor ${rf} > ${n} brokers`);
    if (isr > rf || (rf > 1 && isr >= rf)) errs.push(`StatefulSet/kafka: min.insync.replicas ${isr} leaves no broker to lose at replication ${rf}`);
  }
  return errs;
}
