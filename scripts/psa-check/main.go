// psa-check: evaluates every pod template of rendered manifests against a
// Pod Security Standards level with the API server's own evaluator
// (k8s.io/pod-security-admission), offline. make k8s-check runs it on every
// render at the level the chatd namespace enforces.
//
//	psa-check [-level restricted] RENDER.yaml
//
// Exit 1 if any pod template would be refused, 2 on bad input.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/yaml"
)

type object struct {
	Kind     string            `json:"kind"`
	Metadata metav1.ObjectMeta `json:"metadata"`
}

func template(kind string, doc []byte) (*metav1.ObjectMeta, *corev1.PodSpec, error) {
	switch kind {
	case "Deployment":
		var o appsv1.Deployment
		err := yaml.UnmarshalStrict(doc, &o)
		return &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, err
	case "StatefulSet":
		var o appsv1.StatefulSet
		err := yaml.UnmarshalStrict(doc, &o)
		return &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, err
	case "DaemonSet":
		var o appsv1.DaemonSet
		err := yaml.UnmarshalStrict(doc, &o)
		return &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, err
	case "Job":
		var o batchv1.Job
		err := yaml.UnmarshalStrict(doc, &o)
		return &o.Spec.Template.ObjectMeta, &o.Spec.Template.Spec, err
	case "CronJob":
		var o batchv1.CronJob
		err := yaml.UnmarshalStrict(doc, &o)
		return &o.Spec.JobTemplate.Spec.Template.ObjectMeta, &o.Spec.JobTemplate.Spec.Template.Spec, err
	case "Pod":
		var o corev1.Pod
		err := yaml.UnmarshalStrict(doc, &o)
		return &o.ObjectMeta, &o.Spec, err
	}
	return nil, nil, nil
}

func main() {
	level := flag.String("level", "restricted", "privileged, baseline or restricted")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: psa-check [-level L] RENDER.yaml")
		os.Exit(2)
	}
	lvl, err := api.ParseLevel(*level)
	if err != nil {
		fmt.Fprintln(os.Stderr, "psa-check:", err)
		os.Exit(2)
	}
	data, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "psa-check:", err)
		os.Exit(2)
	}
	eval, err := policy.NewEvaluator(policy.DefaultChecks())
	if err != nil {
		fmt.Fprintln(os.Stderr, "psa-check:", err)
		os.Exit(2)
	}
	lv := api.LevelVersion{Level: lvl, Version: api.LatestVersion()}
	r := utilyaml.NewYAMLReader(bufioReader(data))
	pods, bad := 0, 0
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "psa-check:", err)
			os.Exit(2)
		}
		var o object
		if err := yaml.Unmarshal(doc, &o); err != nil {
			fmt.Fprintln(os.Stderr, "psa-check:", err)
			os.Exit(2)
		}
		meta, spec, err := template(o.Kind, doc)
		if err != nil {
			fmt.Fprintf(os.Stderr, "psa-check: %s/%s: %v\n", o.Kind, o.Metadata.Name, err)
			os.Exit(2)
		}
		if spec == nil {
			continue
		}
		pods++
		for _, res := range eval.EvaluatePod(lv, meta, spec) {
			if !res.Allowed {
				bad++
				fmt.Printf("psa-check: %s/%s violates PodSecurity %q: %s (%s)\n", o.Kind, o.Metadata.Name,
					lv.String(), res.ForbiddenReason, res.ForbiddenDetail)
			}
		}
	}
	if bad > 0 {
		os.Exit(1)
	}
	fmt.Printf("psa-check: %d pod templates meet PodSecurity %q\n", pods, lv.String())
}
